//! Structured edits of the configuration file with `toml_edit`: set or
//! remove a key, append or remove an entry of an array of tables. Every
//! byte the edit does not touch — comments, order, blank lines — stays.

use serde::Deserialize;
use toml_edit::{DocumentMut, Item, Table, Value};

/// A step of a path: a key, or an index into an array (of tables).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Step {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Edit {
    /// `path` = `value` (a JSON string, number, bool or array).
    Set {
        path: Vec<Step>,
        value: serde_json::Value,
    },
    /// Removes the key, or the array entry, at `path`.
    Remove { path: Vec<Step> },
    /// Adds a table (a JSON object) at the end of the array of tables `path`
    /// (`["network"]` adds a `[[network]]`).
    Append {
        path: Vec<Step>,
        value: serde_json::Value,
    },
}

fn to_value(v: &serde_json::Value) -> Result<Value, String> {
    Ok(match v {
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            _ => return Err(format!("{n} is not a number TOML can hold")),
        },
        serde_json::Value::Array(items) => {
            let mut a = toml_edit::Array::new();
            for i in items {
                a.push(to_value(i)?);
            }
            Value::Array(a)
        }
        serde_json::Value::Object(map) => {
            let mut t = toml_edit::InlineTable::new();
            for (k, v) in map {
                t.insert(k, to_value(v)?);
            }
            Value::InlineTable(t)
        }
        serde_json::Value::Null => {
            return Err("null has no TOML form; remove the key instead".into());
        }
    })
}

/// Keys that name an entry of a `[[…]]` list and come first in it.
const FIRST_KEYS: &[&str] = &["name", "range", "domain", "on", "url", "user"];

fn to_table(v: &serde_json::Value) -> Result<Table, String> {
    let serde_json::Value::Object(map) = v else {
        return Err("a table must be a JSON object".into());
    };
    // The naming key first ("range", "name"…), as people write them.
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort_by_key(|k| !FIRST_KEYS.contains(&k.as_str()));
    let mut t = Table::new();
    for k in keys {
        t.insert(k, Item::Value(to_value(&map[k])?));
    }
    Ok(t)
}

fn describe(path: &[Step]) -> String {
    path.iter()
        .map(|s| match s {
            Step::Key(k) => k.clone(),
            Step::Index(i) => format!("[{i}]"),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The table `steps` lead to from `table` (keys, and an index after the
/// key of an array of tables), creating missing tables when `create`.
fn table_at<'a>(
    table: &'a mut Table,
    steps: &[Step],
    create: bool,
) -> Result<&'a mut Table, String> {
    let Some((first, rest)) = steps.split_first() else {
        return Ok(table);
    };
    let Step::Key(key) = first else {
        return Err(format!(
            "{}: an index must follow the name of an array of tables",
            describe(steps)
        ));
    };
    if table.get(key).is_none() {
        if !create {
            return Err(format!("{key}: no such key"));
        }
        table.insert(key, Item::Table(Table::new()));
    }
    match table.get_mut(key).expect("present") {
        Item::Table(t) => table_at(t, rest, create),
        Item::ArrayOfTables(array) => {
            let Some((Step::Index(i), rest)) = rest.split_first() else {
                return Err(format!(
                    "{key}: an array of tables; name an entry by its index"
                ));
            };
            let len = array.len();
            let entry = array
                .get_mut(*i)
                .ok_or_else(|| format!("{key}[{i}]: there are {len} entries"))?;
            table_at(entry, rest, create)
        }
        _ => Err(format!("{key}: not a table")),
    }
}

/// Applies `edits` in order to `text`.
pub fn apply(text: &str, edits: &[Edit]) -> Result<String, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e| format!("{e}"))?;
    for e in edits {
        let root = doc.as_table_mut();
        match e {
            Edit::Set { path, value } => {
                let (last, init) = path.split_last().ok_or("an empty path")?;
                let Step::Key(key) = last else {
                    return Err(format!("{}: set a key, not an index", describe(path)));
                };
                let value = to_value(value)?;
                let table = table_at(root, init, true)?;
                match table.get_mut(key) {
                    // Keep the key where it is, with its comments.
                    Some(Item::Value(old)) => {
                        let decor = old.decor().clone();
                        *old = value;
                        *old.decor_mut() = decor;
                    }
                    Some(_) => {
                        return Err(format!("{}: a table; set its keys instead", describe(path)));
                    }
                    None => {
                        table.insert(key, Item::Value(value));
                    }
                }
            }
            Edit::Remove { path } => {
                let (last, init) = path.split_last().ok_or("an empty path")?;
                match last {
                    Step::Key(key) => {
                        let table = table_at(root, init, false)?;
                        table
                            .remove(key)
                            .ok_or_else(|| format!("{}: no such key", describe(path)))?;
                    }
                    Step::Index(i) => {
                        let (name, before) = init.split_last().ok_or("an index needs a name")?;
                        let Step::Key(name) = name else {
                            return Err(format!("{}: not an array of tables", describe(path)));
                        };
                        let table = table_at(root, before, false)?;
                        let array = table
                            .get_mut(name)
                            .and_then(Item::as_array_of_tables_mut)
                            .ok_or_else(|| format!("{name}: not an array of tables"))?;
                        if *i >= array.len() {
                            return Err(format!("{name}[{i}]: there are {} entries", array.len()));
                        }
                        array.remove(*i);
                    }
                }
            }
            Edit::Append { path, value } => {
                let (last, init) = path.split_last().ok_or("an empty path")?;
                let Step::Key(name) = last else {
                    return Err(format!("{}: append to a name", describe(path)));
                };
                let entry = to_table(value)?;
                let table = table_at(root, init, true)?;
                if table.get(name).is_none() {
                    table.insert(name, Item::ArrayOfTables(toml_edit::ArrayOfTables::new()));
                }
                table
                    .get_mut(name)
                    .and_then(Item::as_array_of_tables_mut)
                    .ok_or_else(|| format!("{name}: not an array of tables"))?
                    .push(entry);
            }
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# Office relay\n[server]\nhostname = \"relay.office.example\" # our name\n\n# The LAN\n[[network]]\nrange = \"192.168.1.0/24\"\nauth = \"none\"\n\n[[network]]\nrange = \"0.0.0.0/0\"\nauth = \"required\"\n";

    fn edits(json: &str) -> Vec<Edit> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_set_keeps_every_other_byte() {
        let out = apply(
            FILE,
            &edits(
                r#"[{"op": "set", "path": ["network", 0, "exclude"], "value": ["192.168.1.1"]}]"#,
            ),
        )
        .unwrap();
        assert!(out.starts_with("# Office relay\n[server]\nhostname = \"relay.office.example\" # our name\n\n# The LAN\n[[network]]\nrange = \"192.168.1.0/24\"\nauth = \"none\"\nexclude = [\"192.168.1.1\"]\n"), "{out}");
        let changed = apply(
            FILE,
            &edits(r#"[{"op": "set", "path": ["server", "hostname"], "value": "mail.office.example"}]"#),
        )
        .unwrap();
        assert_eq!(
            changed,
            FILE.replace("relay.office.example", "mail.office.example")
        );
    }

    #[test]
    fn entries_are_appended_and_removed() {
        let out = apply(
            FILE,
            &edits(r#"[{"op": "append", "path": ["network"], "value": {"range": "10.0.0.0/8", "auth": "none"}}, {"op": "remove", "path": ["network", 1]}]"#),
        )
        .unwrap();
        let config: toml::Table = toml::from_str(&out).unwrap();
        let networks = config["network"].as_array().unwrap();
        assert_eq!(networks.len(), 2);
        assert_eq!(networks[1]["range"].as_str(), Some("10.0.0.0/8"));
        assert!(out.contains("# The LAN"));
        let made = apply("", &edits(r#"[{"op": "set", "path": ["relay", "inbound_domains"], "value": ["office.example"]}]"#)).unwrap();
        assert!(
            made.contains("[relay]") && made.contains("inbound_domains = [\"office.example\"]"),
            "{made}"
        );
        assert!(
            apply(
                FILE,
                &edits(r#"[{"op": "remove", "path": ["network", 5]}]"#)
            )
            .is_err()
        );
        assert!(
            apply(
                FILE,
                &edits(r#"[{"op": "set", "path": ["server"], "value": 1}]"#)
            )
            .is_err()
        );
    }
}
