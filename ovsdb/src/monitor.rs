//! The read side of `monitor_cond`: the column kinds a schema declares, parsing of
//! `<table-updates2>`, and [`TableCache`], a local replica kept current by applying
//! them. Pure code, no I/O.
//!
//! An update2 `modify` carries a diff, not the new value, and its meaning depends on the
//! column's type (ovsdb-server(7) §4.1.14): a scalar column gets the new value; a set
//! column gets the symmetric difference of old and new; a map column gets the pairs
//! whose key was added or removed plus the new value of keys whose value changed. That
//! is why the cache needs the schema. `initial` and `insert` rows omit columns that hold
//! their default value, so an absent column reads as empty.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::atom::{map_entries, set_elements, Row};
use super::OvsdbError;

/// How a column's values are diffed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Exactly one atom (`min` = `max` = 1, no value type).
    Scalar,
    /// A set, including optional atoms (`min` 0, `max` 1).
    Set,
    /// A map.
    Map,
}

/// The column kinds of every table of one database.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schema {
    /// The database name.
    pub name: String,
    tables: BTreeMap<String, BTreeMap<String, ColumnKind>>,
}

impl Schema {
    /// Reads a `get_schema` reply (RFC 7047 §3.2).
    pub fn parse(schema: &Value) -> Result<Self, OvsdbError> {
        let name = schema["name"].as_str().unwrap_or_default().to_string();
        let tables_json = schema["tables"]
            .as_object()
            .ok_or_else(|| OvsdbError::shape("schema has no \"tables\" object", schema))?;
        let mut tables = BTreeMap::new();
        for (table, def) in tables_json {
            let columns_json = def["columns"].as_object().ok_or_else(|| {
                OvsdbError::shape(format!("schema table {table} has no \"columns\""), def)
            })?;
            let mut columns: BTreeMap<String, ColumnKind> = columns_json
                .iter()
                .map(|(column, def)| (column.clone(), column_kind(&def["type"])))
                .collect();
            columns.insert("_uuid".to_string(), ColumnKind::Scalar);
            columns.insert("_version".to_string(), ColumnKind::Scalar);
            tables.insert(table.clone(), columns);
        }
        Ok(Schema { name, tables })
    }

    /// The kind of `table.column`, if the schema has it.
    pub fn column_kind(&self, table: &str, column: &str) -> Option<ColumnKind> {
        self.tables.get(table)?.get(column).copied()
    }
}

fn column_kind(column_type: &Value) -> ColumnKind {
    if column_type.is_string() {
        return ColumnKind::Scalar;
    }
    if column_type.get("value").is_some() {
        return ColumnKind::Map;
    }
    let min = column_type.get("min").and_then(Value::as_u64).unwrap_or(1);
    let max = column_type.get("max").map_or(Some(1), Value::as_u64); // "unlimited" → None
    if min == 1 && max == Some(1) {
        ColumnKind::Scalar
    } else {
        ColumnKind::Set
    }
}

/// One `<row-update2>`.
#[derive(Debug, Clone, PartialEq)]
pub enum RowUpdate {
    /// A row present when the monitor started.
    Initial(Row),
    /// A new row.
    Insert(Row),
    /// The changed columns, as diffs.
    Modify(Row),
    /// The row is gone.
    Delete,
}

/// `<table-updates2>`: table name → row uuid → update.
pub type TableUpdates = BTreeMap<String, BTreeMap<String, RowUpdate>>;

/// Parses a `<table-updates2>` object.
pub fn parse_table_updates2(value: &Value) -> Result<TableUpdates, OvsdbError> {
    let tables = value
        .as_object()
        .ok_or_else(|| OvsdbError::shape("table-updates2 is not an object", value))?;
    let mut out = TableUpdates::new();
    for (table, rows) in tables {
        let rows = rows.as_object().ok_or_else(|| {
            OvsdbError::shape(format!("table-update2 for {table} is not an object"), rows)
        })?;
        let mut updates = BTreeMap::new();
        for (uuid, update) in rows {
            let row = |key: &str| update.get(key).and_then(Value::as_object).cloned();
            let parsed = if let Some(r) = row("initial") {
                RowUpdate::Initial(r)
            } else if let Some(r) = row("insert") {
                RowUpdate::Insert(r)
            } else if let Some(r) = row("modify") {
                RowUpdate::Modify(r)
            } else if update.get("delete").is_some() {
                RowUpdate::Delete
            } else {
                return Err(OvsdbError::shape(
                    format!("row-update2 for {table} {uuid} has no known member"),
                    update,
                ));
            };
            updates.insert(uuid.clone(), parsed);
        }
        out.insert(table.clone(), updates);
    }
    Ok(out)
}

/// Applies one column diff to the old value (`None` = the column's default).
pub fn apply_diff(kind: ColumnKind, old: Option<&Value>, diff: &Value) -> Value {
    match kind {
        ColumnKind::Scalar => diff.clone(),
        ColumnKind::Set => {
            let mut elements: Vec<Value> = old
                .map(|o| set_elements(o).into_iter().cloned().collect())
                .unwrap_or_default();
            for element in set_elements(diff) {
                match elements.iter().position(|e| e == element) {
                    Some(i) => {
                        elements.remove(i);
                    }
                    None => elements.push(element.clone()),
                }
            }
            encode_set(elements)
        }
        ColumnKind::Map => {
            let mut pairs: Vec<(Value, Value)> = old
                .map(|o| {
                    map_entries(o)
                        .into_iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            for (key, value) in map_entries(diff) {
                match pairs.iter().position(|(k, _)| k == key) {
                    Some(i) if pairs[i].1 == *value => {
                        pairs.remove(i);
                    }
                    Some(i) => pairs[i].1 = value.clone(),
                    None => pairs.push((key.clone(), value.clone())),
                }
            }
            let pairs: Vec<Value> = pairs.into_iter().map(|(k, v)| json!([k, v])).collect();
            json!(["map", pairs])
        }
    }
}

/// A one-element set is written as its atom, as the server does.
fn encode_set(mut elements: Vec<Value>) -> Value {
    if elements.len() == 1 {
        elements.pop().unwrap_or_default()
    } else {
        json!(["set", elements])
    }
}

/// A replica of the monitored rows.
#[derive(Debug, Clone)]
pub struct TableCache {
    schema: Schema,
    tables: BTreeMap<String, BTreeMap<String, Row>>,
}

impl TableCache {
    /// An empty cache for `schema`'s database.
    pub fn new(schema: Schema) -> Self {
        TableCache {
            schema,
            tables: BTreeMap::new(),
        }
    }

    /// Applies an initial result or an `update2` notification. A `modify` of an unknown
    /// row means the replica is out of step: an error, after which the caller should
    /// resynchronise (reconnect and monitor again).
    pub fn apply(&mut self, updates: &TableUpdates) -> Result<(), OvsdbError> {
        for (table, rows) in updates {
            let cached = self.tables.entry(table.clone()).or_default();
            for (uuid, update) in rows {
                match update {
                    RowUpdate::Initial(row) | RowUpdate::Insert(row) => {
                        cached.insert(uuid.clone(), row.clone());
                    }
                    RowUpdate::Delete => {
                        if cached.remove(uuid).is_none() {
                            tracing::debug!(table, uuid, "update2 deletes a row not in the cache");
                        }
                    }
                    RowUpdate::Modify(diff) => {
                        let row = cached.get_mut(uuid).ok_or_else(|| OvsdbError::Protocol {
                            reason: format!("update2 modifies unknown row {uuid} of {table}"),
                            excerpt: Value::Object(diff.clone()).to_string(),
                        })?;
                        for (column, change) in diff {
                            let kind = self
                                .schema
                                .column_kind(table, column)
                                .unwrap_or_else(|| guess_kind(change));
                            let new = apply_diff(kind, row.get(column), change);
                            row.insert(column.clone(), new);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The rows of `table` by uuid.
    pub fn table(&self, table: &str) -> impl Iterator<Item = (&String, &Row)> {
        self.tables.get(table).into_iter().flatten()
    }

    /// One row.
    pub fn row(&self, table: &str, uuid: &str) -> Option<&Row> {
        self.tables.get(table)?.get(uuid)
    }
}

/// Fallback for a column the schema does not list (should not happen).
fn guess_kind(change: &Value) -> ColumnKind {
    match change
        .as_array()
        .and_then(|a| a.first())
        .and_then(Value::as_str)
    {
        Some("map") => ColumnKind::Map,
        Some("set") => ColumnKind::Set,
        _ => ColumnKind::Scalar,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atom::{map, set, uuid};

    fn schema() -> Schema {
        Schema::parse(&json!({"name": "db", "tables": {"T": {"columns": {
            "name": {"type": "string"},
            "ofport": {"type": {"key": "integer", "min": 0, "max": 1}},
            "ports": {"type": {"key": {"type": "uuid"}, "min": 0, "max": "unlimited"}},
            "ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}},
            "mode": {"type": {"key": {"type": "string", "enum": ["set", ["a", "b"]]}}}
        }}}}))
        .unwrap()
    }

    #[test]
    fn schema_column_kinds() {
        let s = schema();
        assert_eq!(s.column_kind("T", "name"), Some(ColumnKind::Scalar));
        assert_eq!(s.column_kind("T", "mode"), Some(ColumnKind::Scalar));
        assert_eq!(s.column_kind("T", "ofport"), Some(ColumnKind::Set));
        assert_eq!(s.column_kind("T", "ports"), Some(ColumnKind::Set));
        assert_eq!(s.column_kind("T", "ids"), Some(ColumnKind::Map));
        assert_eq!(s.column_kind("T", "_uuid"), Some(ColumnKind::Scalar));
    }

    #[test]
    fn set_diff_is_symmetric_difference() {
        let old = set([uuid("a"), uuid("b")]);
        let new = apply_diff(ColumnKind::Set, Some(&old), &set([uuid("b"), uuid("c")]));
        assert_eq!(new, set([uuid("a"), uuid("c")]));
        // Optional atom: absent → 5 → 6 → absent.
        let five = apply_diff(ColumnKind::Set, None, &json!(5));
        assert_eq!(five, json!(5));
        let six = apply_diff(ColumnKind::Set, Some(&five), &set([json!(5), json!(6)]));
        assert_eq!(six, json!(6));
        assert_eq!(apply_diff(ColumnKind::Set, Some(&six), &json!(6)), set([]));
    }

    #[test]
    fn map_diff_adds_removes_and_replaces() {
        let old = map([("keep", "1"), ("drop", "2"), ("change", "3")]);
        let diff = map([("drop", "2"), ("change", "30"), ("add", "4")]);
        let new = apply_diff(ColumnKind::Map, Some(&old), &diff);
        assert_eq!(new, map([("keep", "1"), ("change", "30"), ("add", "4")]));
        assert_eq!(
            apply_diff(ColumnKind::Map, None, &map([("k", "v")])),
            map([("k", "v")])
        );
    }

    #[test]
    fn scalar_diff_replaces() {
        assert_eq!(
            apply_diff(ColumnKind::Scalar, Some(&json!("a")), &json!("b")),
            json!("b")
        );
    }

    #[test]
    fn cache_follows_initial_modify_delete() {
        let mut cache = TableCache::new(schema());
        let initial = parse_table_updates2(&json!({"T": {
            "u1": {"initial": {"name": "p1", "ids": ["map", [["iface-id", "web-1"]]]}}
        }}))
        .unwrap();
        cache.apply(&initial).unwrap();
        let modify = parse_table_updates2(&json!({"T": {
            "u1": {"modify": {"ofport": 7, "ids": ["map", [["iface-id", "web-2"]]]}},
            "u2": {"insert": {"name": "p2"}}
        }}))
        .unwrap();
        cache.apply(&modify).unwrap();
        let row = cache.row("T", "u1").unwrap();
        assert_eq!(row["ofport"], json!(7));
        assert_eq!(row["ids"], map([("iface-id", "web-2")]));
        assert_eq!(row["name"], json!("p1"));
        assert_eq!(cache.table("T").count(), 2);
        cache
            .apply(&parse_table_updates2(&json!({"T": {"u2": {"delete": null}}})).unwrap())
            .unwrap();
        assert_eq!(cache.table("T").count(), 1);
    }

    #[test]
    fn modify_of_unknown_row_is_an_error() {
        let mut cache = TableCache::new(schema());
        let bad = parse_table_updates2(&json!({"T": {"nope": {"modify": {"name": "x"}}}})).unwrap();
        assert!(matches!(
            cache.apply(&bad),
            Err(OvsdbError::Protocol { .. })
        ));
    }

    #[test]
    fn malformed_row_update_is_refused() {
        assert!(parse_table_updates2(&json!({"T": {"u": {"frobnicate": {}}}})).is_err());
        assert!(parse_table_updates2(&json!([1])).is_err());
    }
}
