//! Typed access to a request's `data`, answering `missing_field` or `syntax_error`.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// A view of a request's `data` object.
#[derive(Debug, Clone, Copy)]
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl<'a> Fields<'a> {
    /// Returns a mandatory non-empty string field.
    ///
    /// # Errors
    /// `missing_field` when absent or null, `syntax_error` when not a non-empty string.
    pub fn required_str(&self, name: &str) -> Result<&'a str, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Err(ApiError::missing_field(name)),
            Some(Value::String(value)) if !value.is_empty() => Ok(value),
            Some(_) => Err(ApiError::syntax(name, "a non-empty string")),
        }
    }

    /// Returns an optional string field, `None` when absent or null.
    ///
    /// # Errors
    /// `syntax_error` when present but not a string.
    pub fn optional_str(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(value)) => Ok(Some(value)),
            Some(_) => Err(ApiError::syntax(name, "a string")),
        }
    }

    /// Returns an optional non-empty string field, or `default` when absent, null or empty.
    ///
    /// # Errors
    /// `syntax_error` when present but not a string.
    pub fn str_or(&self, name: &str, default: &'a str) -> Result<&'a str, ApiError> {
        Ok(match self.optional_str(name)? {
            Some(value) if !value.is_empty() => value,
            _ => default,
        })
    }

    /// Returns an optional object field.
    ///
    /// # Errors
    /// `syntax_error` when present but not an object.
    pub fn optional_object(&self, name: &str) -> Result<Option<&'a Map<String, Value>>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(value)) => Ok(Some(value)),
            Some(_) => Err(ApiError::syntax(name, "an object")),
        }
    }

    /// Returns an optional field of any JSON type.
    pub fn optional_value(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|value| !value.is_null())
    }

    /// Returns an optional integer field within `range`, or `default`.
    ///
    /// # Errors
    /// `syntax_error` when present but not an integer in range.
    pub fn int_or(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> Result<i64, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(value) => match value {
                // A number sent as text, as NkSERVICE's own sample page sends `level: "4"`.
                Value::String(text) => text.trim().parse::<i64>().ok(),
                _ => value.as_i64(),
            }
            .filter(|number| range.contains(number))
            .ok_or_else(|| {
                ApiError::syntax(
                    name,
                    &format!("an integer from {} to {}", range.start(), range.end()),
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;

    #[test]
    fn field_errors() {
        let data = json!({"a": "x", "b": 3, "e": "", "o": {}, "l": 9, "s": "4", "t": "4x"});
        let Value::Object(map) = data else {
            unreachable!()
        };
        let fields = Fields(&map);
        assert_eq!(fields.required_str("a"), Ok("x"));
        assert_eq!(
            fields.required_str("z").map_err(|e| e.code),
            Err(ErrorCode::MissingField)
        );
        assert_eq!(
            fields.required_str("b").map_err(|e| e.code),
            Err(ErrorCode::SyntaxError)
        );
        assert_eq!(
            fields.required_str("e").map_err(|e| e.code),
            Err(ErrorCode::SyntaxError)
        );
        assert_eq!(fields.str_or("e", "*"), Ok("*"));
        assert!(fields.optional_object("o").is_ok());
        assert!(fields.optional_object("a").is_err());
        assert_eq!(
            fields.int_or("l", 0..=7, 1).map_err(|e| e.code),
            Err(ErrorCode::SyntaxError)
        );
        assert_eq!(fields.int_or("missing", 0..=7, 1), Ok(1));
        assert_eq!(fields.int_or("s", 0..=7, 1), Ok(4), "a numeric string");
        assert_eq!(
            fields.int_or("t", 0..=7, 1).map_err(|e| e.code),
            Err(ErrorCode::SyntaxError)
        );
    }
}
