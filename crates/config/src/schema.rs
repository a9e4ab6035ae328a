//! The config file's JSON Schema, derived from the raw serde types that read it (`raw`):
//! their doc comments are its descriptions, their `schemars` attributes its defaults and
//! enums. `tollgate schema` prints it; `conf/tollgate.schema.json` is a copy a test keeps
//! equal, and the configuration reference in `docs/` is generated from it.

use serde_json::Value;

/// The JSON Schema (draft 2020-12) of a config file.
pub fn schema() -> Value {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<crate::raw::ConfigFile>();
    let mut value = schema.to_value();
    drop_null(&mut value);
    value
}

/// An absent key and a key written without a value (`lb:`) both read as the default, but a
/// schema that offers `null` to editors only invites the second: `Option` fields are
/// described by their value's type alone.
fn drop_null(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".to_owned(), only);
                }
            }
            if let Some(Value::Array(any)) = map.get_mut("anyOf") {
                any.retain(|s| s.get("type").and_then(Value::as_str) != Some("null"));
                if any.len() == 1 {
                    let Some(Value::Object(only)) = any.pop() else {
                        unreachable!("a subschema is an object")
                    };
                    map.remove("anyOf");
                    for (k, v) in only {
                        map.entry(k).or_insert(v);
                    }
                }
            }
            map.values_mut().for_each(drop_null);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schemas_top_level_keys_are_the_sections_parse_reads() {
        let schema = schema();
        let keys: Vec<&str> = schema["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .map(String::as_str)
            .collect();
        let mut sections = crate::raw::SECTIONS.to_vec();
        sections.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, sections);
        assert_eq!(schema["additionalProperties"], Value::Bool(false));
    }

    #[test]
    fn no_schema_offers_null() {
        let text = schema().to_string();
        assert!(!text.contains("\"null\""), "{text}");
    }
}
