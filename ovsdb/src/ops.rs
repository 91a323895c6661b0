//! Typed builders for the transaction operations of RFC 7047 §5.2 (insert, update,
//! mutate, delete, select, wait) with their conditions and mutations.

use serde_json::{json, Value};

use super::atom::Row;

/// A condition function (RFC 7047 §5.1 `<function>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `includes`
    Includes,
    /// `excludes`
    Excludes,
}

impl Function {
    fn as_str(self) -> &'static str {
        match self {
            Function::Eq => "==",
            Function::Ne => "!=",
            Function::Lt => "<",
            Function::Le => "<=",
            Function::Gt => ">",
            Function::Ge => ">=",
            Function::Includes => "includes",
            Function::Excludes => "excludes",
        }
    }
}

/// `[column, function, value]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The column tested.
    pub column: String,
    /// The comparison.
    pub function: Function,
    /// The value compared against.
    pub value: Value,
}

impl Condition {
    /// Any condition.
    pub fn new(column: &str, function: Function, value: Value) -> Self {
        Condition {
            column: column.to_string(),
            function,
            value,
        }
    }

    /// `[column, "==", value]`.
    pub fn eq(column: &str, value: Value) -> Self {
        Self::new(column, Function::Eq, value)
    }

    /// The JSON form.
    pub fn to_json(&self) -> Value {
        json!([self.column, self.function.as_str(), self.value])
    }
}

/// A mutator (RFC 7047 §5.1 `<mutator>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutator {
    /// `+=`
    Add,
    /// `-=`
    Sub,
    /// `*=`
    Mul,
    /// `/=`
    Div,
    /// `%=`
    Mod,
    /// `insert` (set elements or map pairs whose key is absent)
    Insert,
    /// `delete` (set elements, or map pairs given as a map or a set of keys)
    Delete,
}

impl Mutator {
    fn as_str(self) -> &'static str {
        match self {
            Mutator::Add => "+=",
            Mutator::Sub => "-=",
            Mutator::Mul => "*=",
            Mutator::Div => "/=",
            Mutator::Mod => "%=",
            Mutator::Insert => "insert",
            Mutator::Delete => "delete",
        }
    }
}

/// `[column, mutator, value]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    /// The column changed.
    pub column: String,
    /// How.
    pub mutator: Mutator,
    /// The operand.
    pub value: Value,
}

impl Mutation {
    /// Any mutation.
    pub fn new(column: &str, mutator: Mutator, value: Value) -> Self {
        Mutation {
            column: column.to_string(),
            mutator,
            value,
        }
    }

    /// `[column, "insert", value]`.
    pub fn insert(column: &str, value: Value) -> Self {
        Self::new(column, Mutator::Insert, value)
    }

    /// `[column, "delete", value]`.
    pub fn delete(column: &str, value: Value) -> Self {
        Self::new(column, Mutator::Delete, value)
    }

    /// The JSON form.
    pub fn to_json(&self) -> Value {
        json!([self.column, self.mutator.as_str(), self.value])
    }
}

/// What a `wait` operation waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitUntil {
    /// The selected rows equal the given rows.
    Equal,
    /// The selected rows differ from the given rows.
    NotEqual,
}

/// One operation of a `transact` request.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Insert a row, optionally naming it for references later in the transaction.
    Insert {
        table: String,
        row: Row,
        uuid_name: Option<String>,
    },
    /// Set columns of the matching rows.
    Update {
        table: String,
        conditions: Vec<Condition>,
        row: Row,
    },
    /// Mutate columns of the matching rows.
    Mutate {
        table: String,
        conditions: Vec<Condition>,
        mutations: Vec<Mutation>,
    },
    /// Delete the matching rows.
    Delete {
        table: String,
        conditions: Vec<Condition>,
    },
    /// Read the matching rows (all columns unless `columns` is set).
    Select {
        table: String,
        conditions: Vec<Condition>,
        columns: Option<Vec<String>>,
    },
    /// Abort the transaction unless the matching rows, projected on `columns`, compare
    /// to `rows` as `until` says (within `timeout_ms`; 0 means check once).
    Wait {
        table: String,
        conditions: Vec<Condition>,
        columns: Vec<String>,
        until: WaitUntil,
        rows: Vec<Row>,
        timeout_ms: Option<u64>,
    },
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl Op {
    /// `insert` without a uuid-name.
    pub fn insert(table: &str, row: Row) -> Self {
        Op::Insert {
            table: table.to_string(),
            row,
            uuid_name: None,
        }
    }

    /// Names an `insert` so later ops can refer to it with
    /// [`named_uuid`](super::atom::named_uuid).
    /// Has no effect on other operations.
    pub fn with_uuid_name(mut self, name: &str) -> Self {
        if let Op::Insert { uuid_name, .. } = &mut self {
            *uuid_name = Some(name.to_string());
        }
        self
    }

    /// `update`.
    pub fn update(table: &str, conditions: Vec<Condition>, row: Row) -> Self {
        Op::Update {
            table: table.to_string(),
            conditions,
            row,
        }
    }

    /// `mutate`.
    pub fn mutate(table: &str, conditions: Vec<Condition>, mutations: Vec<Mutation>) -> Self {
        Op::Mutate {
            table: table.to_string(),
            conditions,
            mutations,
        }
    }

    /// `delete`.
    pub fn delete(table: &str, conditions: Vec<Condition>) -> Self {
        Op::Delete {
            table: table.to_string(),
            conditions,
        }
    }

    /// `select` of all columns.
    pub fn select(table: &str, conditions: Vec<Condition>) -> Self {
        Op::Select {
            table: table.to_string(),
            conditions,
            columns: None,
        }
    }

    /// Restricts a `select` to `cols`. Has no effect on other operations.
    pub fn with_columns(mut self, cols: &[&str]) -> Self {
        if let Op::Select { columns, .. } = &mut self {
            *columns = Some(strings(cols));
        }
        self
    }

    /// `wait` that checks once (timeout 0): fails the transaction with "timed out"
    /// unless the rows already compare as `until` says.
    pub fn wait(
        table: &str,
        conditions: Vec<Condition>,
        columns: &[&str],
        until: WaitUntil,
        rows: Vec<Row>,
    ) -> Self {
        Op::Wait {
            table: table.to_string(),
            conditions,
            columns: strings(columns),
            until,
            rows,
            timeout_ms: Some(0),
        }
    }

    /// The operation's name as the protocol spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Insert { .. } => "insert",
            Op::Update { .. } => "update",
            Op::Mutate { .. } => "mutate",
            Op::Delete { .. } => "delete",
            Op::Select { .. } => "select",
            Op::Wait { .. } => "wait",
        }
    }

    /// The JSON form.
    pub fn to_json(&self) -> Value {
        let conds = |c: &[Condition]| Value::Array(c.iter().map(Condition::to_json).collect());
        let mut op = match self {
            Op::Insert {
                table,
                row,
                uuid_name,
            } => {
                let mut op = json!({"table": table, "row": row});
                if let Some(name) = uuid_name {
                    op["uuid-name"] = json!(name);
                }
                op
            }
            Op::Update {
                table,
                conditions,
                row,
            } => {
                json!({"table": table, "where": conds(conditions), "row": row})
            }
            Op::Mutate {
                table,
                conditions,
                mutations,
            } => {
                let mutations: Vec<Value> = mutations.iter().map(Mutation::to_json).collect();
                json!({"table": table, "where": conds(conditions), "mutations": mutations})
            }
            Op::Delete { table, conditions } => {
                json!({"table": table, "where": conds(conditions)})
            }
            Op::Select {
                table,
                conditions,
                columns,
            } => {
                let mut op = json!({"table": table, "where": conds(conditions)});
                if let Some(columns) = columns {
                    op["columns"] = json!(columns);
                }
                op
            }
            Op::Wait {
                table,
                conditions,
                columns,
                until,
                rows,
                timeout_ms,
            } => {
                let until = match until {
                    WaitUntil::Equal => "==",
                    WaitUntil::NotEqual => "!=",
                };
                let mut op = json!({
                    "table": table, "where": conds(conditions), "columns": columns,
                    "until": until, "rows": rows,
                });
                if let Some(ms) = timeout_ms {
                    op["timeout"] = json!(ms);
                }
                op
            }
        };
        op["op"] = json!(self.name());
        op
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atom::{map, named_uuid, row, set, uuid};

    #[test]
    fn insert_with_uuid_name_and_references() {
        let op = Op::insert(
            "Port",
            row([("name", json!("br0")), ("interfaces", named_uuid("iface"))]),
        )
        .with_uuid_name("port");
        assert_eq!(
            op.to_json(),
            json!({"op": "insert", "table": "Port", "uuid-name": "port",
                   "row": {"name": "br0", "interfaces": ["named-uuid", "iface"]}})
        );
    }

    #[test]
    fn update_mutate_delete_encode() {
        let by_name = || vec![Condition::eq("name", json!("br0"))];
        let update = Op::update("Bridge", by_name(), row([("fail_mode", json!("secure"))]));
        assert_eq!(
            update.to_json(),
            json!({"op": "update", "table": "Bridge", "where": [["name", "==", "br0"]],
                   "row": {"fail_mode": "secure"}})
        );
        let mutate = Op::mutate(
            "Open_vSwitch",
            vec![Condition::eq("_uuid", uuid("1234"))],
            vec![
                Mutation::delete("other_config", set([json!("hw-offload")])),
                Mutation::insert("other_config", map([("hw-offload", "true")])),
            ],
        );
        assert_eq!(
            mutate.to_json(),
            json!({"op": "mutate", "table": "Open_vSwitch",
                   "where": [["_uuid", "==", ["uuid", "1234"]]],
                   "mutations": [["other_config", "delete", ["set", ["hw-offload"]]],
                                 ["other_config", "insert", ["map", [["hw-offload", "true"]]]]]})
        );
        assert_eq!(
            Op::delete("Port", by_name()).to_json(),
            json!({"op": "delete", "table": "Port", "where": [["name", "==", "br0"]]})
        );
    }

    #[test]
    fn select_and_wait_encode() {
        let select = Op::select("Bridge", vec![]).with_columns(&["_uuid", "name"]);
        assert_eq!(
            select.to_json(),
            json!({"op": "select", "table": "Bridge", "where": [], "columns": ["_uuid", "name"]})
        );
        let wait = Op::wait(
            "Bridge",
            vec![Condition::new("name", Function::Ne, json!("x"))],
            &["name"],
            WaitUntil::NotEqual,
            vec![row([("name", json!("br0"))])],
        );
        assert_eq!(
            wait.to_json(),
            json!({"op": "wait", "table": "Bridge", "where": [["name", "!=", "x"]],
                   "columns": ["name"], "until": "!=", "rows": [{"name": "br0"}],
                   "timeout": 0})
        );
    }
}
