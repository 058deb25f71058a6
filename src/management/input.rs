//! Request bodies of the management API, and the answers to those it cannot use.
//!
//! axum's own rejections are plain text (`Failed to deserialize the JSON body…`) and repeat
//! what the client sent. Here each is answered as the API answers everything else,
//! `{"message": "…"}` as JSON, with its status: 400 malformed JSON, 413 too large, 415 not
//! JSON, 422 valid JSON that does not fit (a missing, duplicate, mistyped or unknown field).
//! A message names fields (an unknown one cut short and escaped), never a value: a client may
//! have put a secret in the wrong field.

use ::axum::Json;
use ::axum::body::Bytes;
use ::axum::extract::rejection::{JsonDataError, JsonRejection};
use ::axum::extract::{FromRequest, Request};
use ::axum::http::{HeaderMap, StatusCode, header};
use ::axum::response::Response;
use serde::de::DeserializeOwned;

use super::message;
use crate::name::EscapedName;

/// A JSON request body.
pub(super) struct JsonBody<T>(pub(super) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(body)) => Ok(Self(body)),
            Err(rejection) => Err(rejected(&rejection)),
        }
    }
}

/// A JSON request body that may be left out: no bytes at all are `T::default()`, whatever the
/// content type (`curl -X POST`, `curl -d ''`). A body that is there must be JSON: one sent
/// without a JSON content type is refused, not ignored.
pub(super) struct JsonOrEmpty<T>(pub(super) T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for JsonOrEmpty<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let json = is_json(request.headers());
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| rejected(&JsonRejection::from(rejection)))?;
        if bytes.is_empty() {
            return Ok(Self(T::default()));
        }
        if !json {
            return Err(not_json());
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(body)) => Ok(Self(body)),
            Err(rejection) => Err(rejected(&rejection)),
        }
    }
}

/// `application/json` or `application/…+json`, parameters allowed: what axum's `Json` takes.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.to_ascii_lowercase();
    kind.eq_ignore_ascii_case("application") && (subtype == "json" || subtype.ends_with("+json"))
}

fn not_json() -> Response {
    message(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "The request body must be JSON, sent with Content-Type: application/json.",
    )
}

/// The API's answer to a body axum's `Json` refused.
pub(super) fn rejected(rejection: &JsonRejection) -> Response {
    match rejection {
        JsonRejection::JsonDataError(err) => message(StatusCode::UNPROCESSABLE_ENTITY, &unfit(err)),
        JsonRejection::JsonSyntaxError(_) => message(
            StatusCode::BAD_REQUEST,
            "The request body is not valid JSON.",
        ),
        JsonRejection::MissingJsonContentType(_) => not_json(),
        // The body could not be read: too large (`DefaultBodyLimit`), or cut off.
        other => match other.status() {
            StatusCode::PAYLOAD_TOO_LARGE => message(
                StatusCode::PAYLOAD_TOO_LARGE,
                "The request body is too large.",
            ),
            status => message(status, "The request body could not be read."),
        },
    }
}

/// The longest field name an error repeats, in characters.
const MAX_FIELD_SHOWN: usize = 40;

/// Why well-formed JSON does not fit, from serde's error, keeping only what is the API's own
/// (its field names, the type it expected) and the name of an unknown field; serde's wording
/// also quotes values (`invalid type: string "…"`), which are left out.
fn unfit(err: &JsonDataError) -> String {
    let Some(err) = path_error(err) else {
        return "The request body does not fit: check the fields and their types.".into();
    };
    let path = err.path().to_string();
    let text = err.inner().to_string();
    // serde_json puts the position last; serde's own wording comes before it.
    let text = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(text, _)| text);
    if let Some(rest) = text.strip_prefix("unknown field `") {
        // The last "`, expected " is serde's: the client's field name comes before it.
        let (field, expected) = rest.rsplit_once("`, expected ").unwrap_or((rest, ""));
        let field = shown(field);
        return if expected.is_empty() {
            format!("Unknown field `{field}`.")
        } else {
            format!("Unknown field `{field}`: expected {expected}.")
        };
    }
    for (prefix, what) in [
        ("missing field `", "is required"),
        ("duplicate field `", "is given twice"),
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            let field = rest.split('`').next().unwrap_or_default();
            return format!("The field `{}` {what}.", shown(field));
        }
    }
    if path == "." {
        return "The request body must be a JSON object.".into();
    }
    let path = shown(&path);
    let quotes_a_value = ["invalid type: ", "invalid value: ", "invalid length "]
        .iter()
        .any(|p| text.starts_with(p));
    match text.rsplit_once(", expected ") {
        Some((_, expected)) if quotes_a_value => {
            format!("The field `{path}` is invalid: expected {expected}.")
        }
        _ => format!("The field `{path}` is invalid."),
    }
}

/// The path-tracking error axum's `Json` wraps in its rejection.
fn path_error(err: &JsonDataError) -> Option<&serde_path_to_error::Error<serde_json::Error>> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(err) = source {
        if let Some(found) = err.downcast_ref() {
            return Some(found);
        }
        source = err.source();
    }
    None
}

/// A field name from the client, to repeat: at most [`MAX_FIELD_SHOWN`] characters, escaped.
fn shown(field: &str) -> String {
    let mut out: String = field.chars().take(MAX_FIELD_SHOWN).collect();
    if field.chars().nth(MAX_FIELD_SHOWN).is_some() {
        out.push('…');
    }
    EscapedName::new(&out).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        for (value, json) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("Application/JSON", true),
            ("application/merge-patch+json", true),
            ("text/json", false),
            ("text/plain", false),
            ("application/jsonx", false),
            ("", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(is_json(&headers), json, "{value}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
