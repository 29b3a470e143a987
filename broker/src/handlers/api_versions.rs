//! ApiVersions: the implemented-API table, and the KIP-511 answer to versions we do not know.

use creek_protocol::codec::encode_response;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};

use super::{APIS, Ctx, Outcome, Request, code};

fn table() -> ApiVersionsResponse {
    let mut resp = ApiVersionsResponse::default();
    resp.api_keys = APIS
        .iter()
        .map(|&(key, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = key as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    // Left at their defaults so no tagged fields are written: librdkafka 2.0.2 (Debian's kcat)
    // misreads a v3 response that carries them.
    resp.finalized_features_epoch = -1;
    resp
}

pub(super) async fn handle(_ctx: &Ctx, _req: Request<ApiVersionsRequest>) -> Option<ApiVersionsResponse> {
    Some(table())
}

/// KIP-511: an ApiVersions request at a version we do not serve gets a v0 response carrying
/// UNSUPPORTED_VERSION and our table, so the client can retry with a version we know.
pub(crate) fn unsupported_version_response(correlation_id: i32) -> Outcome {
    let mut resp = table();
    resp.error_code = code::UNSUPPORTED_VERSION;
    match encode_response(ApiKey::ApiVersions, 0, correlation_id, &resp) {
        Ok(bytes) => Outcome::Reply(bytes),
        Err(e) => Outcome::Close(e),
    }
}
