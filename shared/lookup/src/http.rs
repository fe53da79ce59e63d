//! What the HTTP back ends (CloudPBX, MX Proxy) share: URLs built from
//! encoded parts, and bodies read up to a limit.

use url::Url;

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("{0}")]
    Transport(reqwest::Error),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
}

/// `base` with `segments` appended as path segments (each percent-encoded,
/// so a name never changes the URL's shape) and `query` as encoded pairs.
pub fn endpoint(base: &Url, segments: &[&str], query: &[(&str, &str)]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url.set_query(None);
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    url
}

/// The body, chunk by chunk, refused once it passes `limit` bytes (an
/// endless or oversized answer costs at most `limit` of memory).
pub async fn read_body(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
