//! The API's JSON body extractor: axum's `Json`, except that a number with no fractional
//! part (`4.0`) is the integer it is, as JSON Schema (and so the OpenAPI description) says,
//! and that every value must have the JSON type the description gives it (serde alone would
//! take an array for a struct).

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Number, Value};

/// A request's JSON body, deserialized into `T`.
pub struct Body<T>(pub T);

/// Why a body was refused; answered as 400 with the reason.
#[derive(Debug)]
pub struct BodyRejection {
    status: StatusCode,
    message: String,
}

impl BodyRejection {
    fn bad(message: String) -> BodyRejection {
        BodyRejection {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }
}

impl IntoResponse for BodyRejection {
    fn into_response(self) -> Response {
        super::error(self.status, &self.message)
    }
}

impl<T: DeserializeOwned + JsonSchema + 'static, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = BodyRejection;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let essence = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                essence == "application/json"
                    || (essence.starts_with("application/") && essence.ends_with("+json"))
            });
        if !json {
            return Err(BodyRejection {
                status: StatusCode::BAD_REQUEST,
                message: "Expected request with `Content-Type: application/json`".into(),
            });
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| BodyRejection {
                status: e.status(),
                message: e.body_text(),
            })?;
        parse(&bytes).map(Body).map_err(BodyRejection::bad)
    }
}

/// `bytes` as a `T`, or the message naming the field at fault.
pub fn parse<T: DeserializeOwned + JsonSchema + 'static>(bytes: &[u8]) -> Result<T, String> {
    let mut value: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("Failed to parse the request body as JSON: {e}"))?;
    integral(&mut value);
    let schema = schema_of::<T>();
    if let Err(problem) = check_types(&value, &schema, &schema, "") {
        return Err(format!(
            "Failed to deserialize the JSON body into the target type: {problem}"
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            format!("Failed to deserialize the JSON body into the target type: {inner}")
        } else {
            format!("Failed to deserialize the JSON body into the target type: {path}: {inner}")
        }
    })
}

/// `T`'s JSON Schema (with its definitions under `$defs`), made once per type.
fn schema_of<T: JsonSchema + 'static>() -> Arc<Value> {
    static SCHEMAS: OnceLock<Mutex<HashMap<TypeId, Arc<Value>>>> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(Default::default);
    let mut schemas = schemas.lock().unwrap_or_else(|e| e.into_inner());
    schemas
        .entry(TypeId::of::<T>())
        .or_insert_with(|| {
            let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
            Arc::new(generator.into_root_schema_for::<T>().to_value())
        })
        .clone()
}

/// Whether `value` has, at every depth, the JSON type `schema` gives it; the error names the
/// first field that does not. Only types are checked here: patterns, ranges and the rest are
/// the handlers' to check, with messages of their own.
fn check_types(value: &Value, schema: &Value, root: &Value, path: &str) -> Result<(), String> {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => reference
            .strip_prefix("#/$defs/")
            .and_then(|name| root["$defs"].get(name))
            .unwrap_or(&Value::Bool(true)),
        None => schema,
    };
    for all in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        check_types(value, all, root, path)?;
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alternatives) = schema.get(key).and_then(Value::as_array)
            && !alternatives.is_empty()
        {
            let fits = alternatives
                .iter()
                .map(|alt| check_types(value, alt, root, path));
            let errors: Vec<String> = fits.filter_map(Result::err).collect();
            if errors.len() == alternatives.len() {
                return Err(errors.into_iter().next().unwrap_or_default());
            }
        }
    }
    if let Some(types) = schema.get("type") {
        let allowed: Vec<&str> = match types {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !allowed.is_empty() && !allowed.iter().any(|t| has_type(value, t)) {
            let field = if path.is_empty() { "." } else { path };
            return Err(format!("{field}: expected {}", allowed.join(" or ")));
        }
    }
    match value {
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            for (key, inner) in map {
                if let Some(property) = properties.and_then(|p| p.get(key)) {
                    let path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    check_types(inner, property, root, &path)?;
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                for (idx, inner) in items.iter().enumerate() {
                    check_types(inner, item, root, &format!("{path}[{idx}]"))?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => value.is_u64() || value.is_i64(),
        _ => true,
    }
}

/// Turns every float with no fractional part that fits a 64-bit integer into that integer.
fn integral(value: &mut Value) {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // 2^64 and -2^63 are exact as floats; everything strictly inside converts.
            let whole = f.is_finite() && f.fract() == 0.0;
            if whole && (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                *n = Number::from(f as u64);
            } else if whole && (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                *n = Number::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral),
        Value::Object(map) => map.values_mut().for_each(integral),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Vm {
        vcpus: u32,
        nested: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize, schemars::JsonSchema, PartialEq)]
    struct Inner {
        offset: i64,
        ratio: f64,
    }

    #[test]
    fn whole_floats_are_integers_and_the_rest_is_refused_by_field() {
        let vm: Vm =
            parse(br#"{"vcpus": 4.0, "nested": [{"offset": -3.0, "ratio": 0.5}]}"#).unwrap();
        assert_eq!(vm.vcpus, 4);
        assert_eq!(vm.nested[0].offset, -3);
        assert_eq!(vm.nested[0].ratio, 0.5);
        let half = parse::<Vm>(br#"{"vcpus": 4.5, "nested": []}"#).unwrap_err();
        assert!(half.contains("vcpus: expected integer"), "{half}");
        let huge = parse::<Vm>(br#"{"vcpus": 1e300, "nested": []}"#).unwrap_err();
        assert!(huge.contains("vcpus:"), "{huge}");
        let big = parse::<Vm>(br#"{"vcpus": 5000000000.0, "nested": []}"#).unwrap_err();
        assert!(
            big.contains("vcpus: invalid value: integer `5000000000`"),
            "{big}"
        );
        let unknown = parse::<Vm>(br#"{"vcpus": 1, "nested": [], "x": 1}"#).unwrap_err();
        assert!(unknown.contains("unknown field `x`"), "{unknown}");
        let nested =
            parse::<Vm>(br#"{"vcpus": 1, "nested": [{"offset": "a", "ratio": 1}]}"#).unwrap_err();
        assert!(nested.contains("nested[0].offset:"), "{nested}");
        assert!(
            parse::<Vm>(b"{")
                .unwrap_err()
                .starts_with("Failed to parse")
        );
        // serde alone takes an array for a struct; the description says object.
        let array = parse::<Vm>(br#"{"vcpus": 1, "nested": [[-3, 0.5]]}"#).unwrap_err();
        assert!(array.contains("nested[0]: expected object"), "{array}");
        let whole = parse::<Vm>(br#"[1, []]"#).unwrap_err();
        assert!(whole.contains(".: expected object"), "{whole}");
    }
}
