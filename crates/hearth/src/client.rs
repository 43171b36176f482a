//! A small blocking client of the local agent's JSON API, used by the CLI commands.

use std::path::PathBuf;

use clap::Args;
use serde::de::DeserializeOwned;

/// How a client command reaches the agent, and how it prints.
#[derive(Args)]
pub struct ClientArgs {
    /// The agent's API address.
    #[arg(long, global = true, value_name = "ADDR", env = "HEARTH_API", default_value = hearth_agent::dev::DEV_API_ADDR)]
    pub api: String,
    /// The API token. Without it, the CLI reads HEARTH_TOKEN_FILE, then the dev agent's
    /// token file, then /var/lib/hearth/api-token.
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        env = "HEARTH_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no API token: pass --token, set HEARTH_TOKEN or HEARTH_TOKEN_FILE, or run as a user who can read {0}"
    )]
    NoToken(String),
    #[error(
        "cannot reach the agent at {addr} ({source}); is `hearth agent` running? Set --api or HEARTH_API to its api_addr"
    )]
    Unreachable { addr: String, source: ureq::Error },
    #[error("the agent answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the agent's answer is not what this CLI expects: {0}")]
    Decode(String),
    #[error("{0}")]
    Usage(String),
    /// What was asked did not happen (a move given up, say); exit code 1.
    #[error("{0}")]
    Failed(String),
}

pub struct ApiClient {
    base: String,
    addr: String,
    token: String,
    agent: ureq::Agent,
}

impl ApiClient {
    pub fn new(args: &ClientArgs) -> Result<ApiClient, ClientError> {
        let token = match &args.token {
            Some(token) => token.clone(),
            None => find_token()?,
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .new_agent();
        Ok(ApiClient {
            base: format!("http://{}", args.api),
            addr: args.api.clone(),
            token,
            agent,
        })
    }

    /// Opens the WebSocket at `path` with the token; a refusal is the agent's status and
    /// message, as for the other calls.
    pub fn websocket(
        &self,
        path: &str,
    ) -> Result<tungstenite::WebSocket<std::net::TcpStream>, ClientError> {
        use tungstenite::client::IntoClientRequest;
        use tungstenite::handshake::HandshakeError;
        let failed = |e: &dyn std::fmt::Display| ClientError::Failed(format!("{path}: {e}"));
        let stream = std::net::TcpStream::connect(&self.addr).map_err(|e| {
            ClientError::Failed(format!(
                "cannot reach the agent at {} ({e}); is `hearth agent` running? Set --api or HEARTH_API to its api_addr",
                self.addr
            ))
        })?;
        let mut request = format!("ws://{}{path}", self.addr)
            .into_client_request()
            .map_err(|e| failed(&e))?;
        let bearer = format!("Bearer {}", self.token).parse().map_err(|_| {
            ClientError::Usage("the API token has characters a header cannot carry".into())
        })?;
        request.headers_mut().insert("Authorization", bearer);
        match tungstenite::client::client(request, stream) {
            Ok((socket, _)) => Ok(socket),
            Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                let body = response.body().clone().unwrap_or_default();
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                Err(ClientError::Status {
                    status: response.status().as_u16(),
                    message,
                })
            }
            Err(e) => Err(failed(&e)),
        }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        self.decode(response)
    }

    pub fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_empty();
        self.decode(response)
    }

    pub fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, ClientError> {
        let response = self
            .agent
            .put(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body);
        self.decode(response)
    }

    pub fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, ClientError> {
        let response = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body);
        self.decode(response)
    }

    /// PUTs the bytes `reader` gives, without a time limit (an image can take minutes).
    pub fn put_stream<T: DeserializeOwned>(
        &self,
        path: &str,
        reader: &mut dyn std::io::Read,
    ) -> Result<T, ClientError> {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        let response = agent
            .put(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/octet-stream")
            .send(ureq::SendBody::from_reader(reader));
        self.decode(response)
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self
            .agent
            .delete(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call();
        self.decode(response)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut response = response.map_err(|source| ClientError::Unreachable {
            addr: self.addr.clone(),
            source,
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| ClientError::Decode(e.to_string()))?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(String::from))
                .unwrap_or(body);
            return Err(ClientError::Status { status, message });
        }
        serde_json::from_str(&body).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

/// The token files the CLI tries, in order, when no token is given.
fn token_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(path) = std::env::var_os("HEARTH_TOKEN_FILE") {
        files.push(PathBuf::from(path));
    }
    files.push(hearth_agent::dev::dev_data_dir().join("api-token"));
    files.push(PathBuf::from("/var/lib/hearth/api-token"));
    files
}

fn find_token() -> Result<String, ClientError> {
    let files = token_files();
    files
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| text.trim().to_owned())
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            ClientError::NoToken(
                files
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or "),
            )
        })
}
