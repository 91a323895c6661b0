//! OVSDB values in their JSON notation (RFC 7047 §5.1): building atoms, sets, maps and
//! rows, and reading them back (a one-element set may arrive as a bare atom).

use serde_json::{json, Map, Value};

/// A row or partial row: column name to value in OVSDB JSON notation.
pub type Row = Map<String, Value>;

/// Builds a [`Row`] from `(column, value)` pairs.
pub fn row<'a>(columns: impl IntoIterator<Item = (&'a str, Value)>) -> Row {
    columns
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
}

/// `["uuid", u]`: a reference to an existing row.
pub fn uuid(u: &str) -> Value {
    json!(["uuid", u])
}

/// `["named-uuid", n]`: a reference to a row inserted earlier in the same transaction.
pub fn named_uuid(name: &str) -> Value {
    json!(["named-uuid", name])
}

/// `["set", [...]]`.
pub fn set(elements: impl IntoIterator<Item = Value>) -> Value {
    json!(["set", elements.into_iter().collect::<Vec<_>>()])
}

/// `["map", [[k, v], ...]]`.
pub fn map<K: Into<Value>, V: Into<Value>>(pairs: impl IntoIterator<Item = (K, V)>) -> Value {
    let pairs: Vec<Value> = pairs
        .into_iter()
        .map(|(k, v)| json!([k.into(), v.into()]))
        .collect();
    json!(["map", pairs])
}

/// The elements of a set value. OVSDB writes a one-element set as the bare atom, so
/// anything that is not `["set", ...]` counts as one element.
pub fn set_elements(value: &Value) -> Vec<&Value> {
    match value.as_array().map(Vec::as_slice) {
        Some([tag, Value::Array(items)]) if tag == "set" => items.iter().collect(),
        _ => vec![value],
    }
}

/// The `(key, value)` pairs of a `["map", ...]` value; empty for anything else.
pub fn map_entries(value: &Value) -> Vec<(&Value, &Value)> {
    match value.as_array().map(Vec::as_slice) {
        Some([tag, Value::Array(pairs)]) if tag == "map" => pairs
            .iter()
            .filter_map(|p| match p.as_array().map(Vec::as_slice) {
                Some([k, v]) => Some((k, v)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The value stored under the string `key` in a map value.
pub fn map_get<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    map_entries(value)
        .into_iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// The uuid string of `["uuid", u]`.
pub fn as_uuid(value: &Value) -> Option<&str> {
    match value.as_array().map(Vec::as_slice) {
        Some([tag, Value::String(u)]) if tag == "uuid" => Some(u),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atom_readers() {
        let ids = map([("iface-id", "web-1"), ("other", "x")]);
        assert_eq!(map_get(&ids, "iface-id"), Some(&json!("web-1")));
        assert_eq!(map_get(&ids, "missing"), None);
        assert_eq!(set_elements(&json!(5)), vec![&json!(5)]);
        assert_eq!(set_elements(&set([json!(1), json!(2)])).len(), 2);
        assert!(set_elements(&set([])).is_empty());
        assert_eq!(as_uuid(&uuid("abc")), Some("abc"));
        assert_eq!(as_uuid(&json!("abc")), None);
    }
}
