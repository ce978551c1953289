//! ComfyUI's websocket (`GET /ws?clientId=…`): the server pushes `{"type", "data"}` JSON
//! messages about the prompts it runs (`execution_start`, `executing`, `progress`, `executed`,
//! `execution_error`, `execution_interrupted`, `execution_success`, …) and binary preview
//! frames. We open it before submitting, so no message of our prompt is missed, and only read
//! it: the result itself always comes from `/history`, so a lost socket costs progress reports,
//! never an image.

use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::wire::{execution_error, interrupted};
use crate::core::ports::model::BackendError;

/// An open socket.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest message we accept: status JSON is small, previews are JPEGs of a few hundred KB.
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// What one socket message means for our prompt.
#[derive(Debug)]
pub enum Event {
    /// A sampler step: `value` of `max`.
    Progress { value: u64, max: u64 },
    /// Our prompt finished (`execution_success`, or `executing` with no node).
    Done,
    /// Our prompt failed.
    Failed(BackendError),
    /// Anything else: other prompts, queue status, previews, nodes starting.
    Other,
}

/// `ws://` or `wss://` for the API at `base` (whose path prefix is kept, for proxies that
/// serve ComfyUI under one).
pub fn url(base: &reqwest::Url, client_id: &str) -> Option<String> {
    let scheme = match base.scheme() {
        "http" => "ws",
        "https" => "wss",
        _ => return None,
    };
    let mut u = base.clone();
    u.set_scheme(scheme).ok()?;
    let path = format!("{}/ws", u.path().trim_end_matches('/'));
    u.set_path(&path);
    u.set_query(Some(&format!("clientId={client_id}")));
    Some(u.to_string())
}

/// Opens the socket, with the auth header when one is configured. The error is a short
/// reason for the log, never the header's value.
/// `auth` is the header the HTTP calls send, checked once when the adapter was made.
pub async fn connect(
    url: &str,
    auth: Option<&(HeaderName, HeaderValue)>,
) -> Result<Socket, String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad websocket URL: {e}"))?;
    if let Some((name, value)) = auth {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let config = WebSocketConfig {
        max_message_size: Some(MAX_MESSAGE_BYTES),
        max_frame_size: Some(MAX_MESSAGE_BYTES),
        ..Default::default()
    };
    let (socket, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(|e| describe(&e))?;
    Ok(socket)
}

/// A connection error without the request (which carries the secret header).
fn describe(e: &tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Http(resp) => format!("the server answered HTTP {}", resp.status().as_u16()),
        E::Io(io) => io.to_string(),
        E::Url(u) => u.to_string(),
        E::Tls(_) => "TLS failure".into(),
        _ => "websocket handshake failed".into(),
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

/// Reads one text message; messages about other prompts are [`Event::Other`].
pub fn event(text: &str, prompt_id: &str) -> Event {
    let Ok(msg) = serde_json::from_str::<Envelope>(text) else {
        return Event::Other;
    };
    if msg.data.get("prompt_id").and_then(Value::as_str) != Some(prompt_id) {
        return Event::Other;
    }
    let data = &msg.data;
    match msg.kind.as_str() {
        "progress" => Event::Progress {
            value: data.get("value").and_then(Value::as_u64).unwrap_or(0),
            max: data.get("max").and_then(Value::as_u64).unwrap_or(0),
        },
        "executing" if data.get("node").is_some_and(Value::is_null) => Event::Done,
        "execution_success" => Event::Done,
        "execution_error" => Event::Failed(execution_error(data)),
        "execution_interrupted" => Event::Failed(interrupted()),
        _ => Event::Other,
    }
}

/// Sampler progress as a percentage.
pub fn percent(value: u64, max: u64) -> u8 {
    if max == 0 {
        return 0;
    }
    (value.min(max).saturating_mul(100) / max) as u8
}
