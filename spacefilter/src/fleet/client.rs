//! The HTTP side of the fleet link, shared by the follower and the
//! [`Publisher`](super::publish::Publisher): the members' URLs, an agent
//! with the link's TLS, and the login, if etcd has authentication on.
//!
//! A login is `POST /v3/auth/authenticate {"name", "password"}`, whose
//! token goes with every request after it in the `Authorization` header.
//! etcd's simple tokens lapse (`--auth-token-ttl`, 5 minutes unless set)
//! and are forgotten when a member restarts: a request whose token etcd no
//! longer knows logs in again and is sent once more.

use std::{
    fmt,
    io::{BufRead, BufReader, Cursor, Read as _},
    path::Path,
    sync::{Mutex, PoisonError},
};

use serde_json::{Value, json};

use super::{
    etcd::Settings,
    gateway::json_of,
    tls::{self, TlsFiles},
};

/// A user of etcd's authentication, as `--etcd-user` and
/// `--etcd-password-file` give it.
#[derive(Clone)]
pub struct Login {
    user: String,
    password: String,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { user, password: _ } = self;
        f.debug_struct("Login")
            .field("user", user)
            .finish_non_exhaustive()
    }
}

impl Login {
    /// The user `user`, whose password is the first line of
    /// `password_file`.
    pub fn read(user: &str, password_file: &Path) -> Result<Self, String> {
        if user.is_empty() {
            return Err("--etcd-user: give the name of an etcd user".to_owned());
        }
        let text = std::fs::read_to_string(password_file).map_err(|err| {
            format!(
                "--etcd-password-file {}: {err}; write the password of --etcd-user {user} into it",
                password_file.display()
            )
        })?;
        let password = text.lines().next().unwrap_or_default().to_owned();
        if password.is_empty() {
            return Err(format!(
                "--etcd-password-file {}: holds no password (the first line is the password of --etcd-user {user})",
                password_file.display()
            ));
        }
        Ok(Self {
            user: user.to_owned(),
            password,
        })
    }

    /// The user's name.
    #[must_use]
    pub fn user(&self) -> &str {
        &self.user
    }
}

impl Settings {
    /// Speaks TLS with the files of `--etcd-cacert`, `--etcd-cert` and
    /// `--etcd-key`; the error says what to fix.
    pub fn with_tls(mut self, files: &TlsFiles) -> Result<Self, String> {
        tls::check_scheme("--etcd", &self.endpoints, files)?;
        self.tls = tls::client_config("--etcd", files)?;
        Ok(self)
    }

    /// Logs in as `login`.
    #[must_use]
    pub fn with_login(mut self, login: Login) -> Self {
        self.login = Some(login);
        self
    }
}

/// The token the requests carry.
enum Token {
    /// None yet: the next request logs in first.
    Wanted,
    /// etcd has authentication off: the requests go without.
    Off,
    Held(String),
}

/// A client of the fleet's etcd cluster.
pub(super) struct Client {
    agent: ureq::Agent,
    endpoints: Vec<String>,
    login: Option<Login>,
    token: Mutex<Token>,
}

/// Why a request failed.
struct Failure {
    message: String,
    /// etcd does not know the token (lapsed, or the member restarted), or
    /// wants one it did not get.
    token: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self {
            message,
            token: false,
        }
    }
}

/// Whether etcd's error says the request's token is of no use.
fn token_refused(message: &str) -> bool {
    [
        "invalid auth token",
        "user name is empty",
        "auth store is old",
    ]
    .iter()
    .any(|m| message.contains(m))
}

impl Client {
    /// For the cluster of `settings`, with an agent from `agent` (its
    /// timeouts) and the settings' TLS.
    pub(super) fn new(settings: &Settings, agent: ureq::AgentBuilder) -> Self {
        let agent = match &settings.tls {
            Some(config) => agent.tls_config(config.clone()),
            None => agent,
        };
        Self {
            agent: agent.build(),
            endpoints: settings.endpoints.clone(),
            login: settings.login.clone(),
            token: Mutex::new(if settings.login.is_some() {
                Token::Wanted
            } else {
                Token::Off
            }),
        }
    }

    /// Posts to the first member that answers; the answer's JSON.
    pub(super) fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let mut last = String::new();
        for endpoint in &self.endpoints {
            match self.post_to(endpoint, path, body) {
                Ok(response) => return json_of(response),
                Err(err) => last = format!("{endpoint}: {err}"),
            }
        }
        Err(last)
    }

    /// Posts to the member at `endpoint`, logged in if the settings say
    /// so.
    pub(super) fn post_to(
        &self,
        endpoint: &str,
        path: &str,
        body: &Value,
    ) -> Result<ureq::Response, String> {
        self.again_once(endpoint, |token| self.send(endpoint, path, body, token))
    }

    /// Opens a watch at `endpoint` (`body` is its `create_request`); its
    /// answers, a JSON object a line, the first of which says whether it
    /// was created.
    pub(super) fn watch(
        &self,
        endpoint: &str,
        body: &Value,
    ) -> Result<impl BufRead + use<>, String> {
        self.again_once(endpoint, |token| {
            let response = self.send(endpoint, "/v3/watch", body, token)?;
            let mut reader = BufReader::new(response.into_reader());
            let mut first = String::new();
            reader
                .read_line(&mut first)
                .map_err(|err| format!("opening the watch: {err}"))?;
            // A watch etcd refuses still answers 200, and says why in its
            // first line.
            let refused: Value = serde_json::from_str(&first).unwrap_or(Value::Null);
            let reason = refused["result"]["cancel_reason"].as_str().unwrap_or("");
            if refused["result"]["canceled"] == true && token_refused(reason) {
                return Err(Failure {
                    message: format!("the watch was refused: {reason}"),
                    token: true,
                });
            }
            Ok(Cursor::new(first.into_bytes()).chain(reader))
        })
    }

    /// Runs `request` with the token, logging in first if there is none;
    /// if etcd refuses the token, logs in again and runs it once more.
    fn again_once<T>(
        &self,
        endpoint: &str,
        request: impl Fn(Option<&str>) -> Result<T, Failure>,
    ) -> Result<T, String> {
        let token = self.token(endpoint)?;
        match request(token.as_deref()) {
            Err(Failure { token: true, .. }) if self.login.is_some() => {
                *self.token.lock().unwrap_or_else(PoisonError::into_inner) = Token::Wanted;
                let token = self.token(endpoint)?;
                request(token.as_deref()).map_err(|f| self.explain(f))
            }
            other => other.map_err(|f| self.explain(f)),
        }
    }

    /// Says what to do about a refusal etcd explains with its own words.
    fn explain(&self, failure: Failure) -> String {
        let Failure { message, token } = failure;
        if token && self.login.is_none() {
            format!(
                "{message}: etcd has authentication on; give --etcd-user and --etcd-password-file (user and password_file in the config's [fleet])"
            )
        } else if message.contains("permission denied") {
            let user = self.login.as_ref().map_or("the user", Login::user);
            format!(
                "{message}: grant {user} a role with readwrite on /spacefilter/ (`etcdctl role grant-permission ROLE --prefix=true readwrite /spacefilter/`)"
            )
        } else if message.contains("connection closed (HTTP 503)") {
            format!(
                "{message}: etcd's JSON gateway could not reach the member's own gRPC server; with --client-cert-auth, the member's certificate (--cert-file) must allow client authentication too (extendedKeyUsage serverAuth, clientAuth)"
            )
        } else {
            message
        }
    }

    /// The token to send: the one held, or a new one from `endpoint`.
    fn token(&self, endpoint: &str) -> Result<Option<String>, String> {
        let mut token = self.token.lock().unwrap_or_else(PoisonError::into_inner);
        match &*token {
            Token::Off => return Ok(None),
            Token::Held(held) => return Ok(Some(held.clone())),
            Token::Wanted => {}
        }
        let Some(login) = &self.login else {
            *token = Token::Off;
            return Ok(None);
        };
        match self.send(
            endpoint,
            "/v3/auth/authenticate",
            &json!({"name": login.user, "password": login.password}),
            None,
        ) {
            Ok(response) => {
                let answer = json_of(response)?;
                let held = answer["token"]
                    .as_str()
                    .ok_or_else(|| format!("logging in as {}: no token in {answer}", login.user))?;
                log::info!("fleet: logged in to etcd as {}", login.user);
                *token = Token::Held(held.to_owned());
                Ok(Some(held.to_owned()))
            }
            Err(Failure { message, .. }) if message.contains("authentication is not enabled") => {
                log::info!(
                    "fleet: etcd has authentication off: the requests go without logging in as {}",
                    login.user
                );
                *token = Token::Off;
                Ok(None)
            }
            Err(Failure { message, .. }) if message.contains("authentication failed") => {
                Err(format!(
                    "logging in as {}: {message}: check --etcd-user and --etcd-password-file (user and password_file in [fleet])",
                    login.user
                ))
            }
            Err(Failure { message, .. }) => Err(format!("logging in as {}: {message}", login.user)),
        }
    }

    fn send(
        &self,
        endpoint: &str,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<ureq::Response, Failure> {
        let mut request = self
            .agent
            .post(&format!("{endpoint}{path}"))
            .set("Content-Type", "application/json");
        if let Some(token) = token {
            request = request.set("Authorization", token);
        }
        match request.send_string(&body.to_string()) {
            Ok(response) => Ok(response),
            Err(ureq::Error::Status(code, response)) => {
                let said = refusal(response);
                Err(Failure {
                    token: code == 401 || token_refused(&said),
                    message: if said.is_empty() {
                        format!("HTTP {code}")
                    } else {
                        format!("{said} (HTTP {code})")
                    },
                })
            }
            Err(err) => {
                // Said as `{url}: {kind}: ...`: the endpoint is said by the
                // caller.
                let text = err.to_string();
                let text = text.strip_prefix(endpoint).unwrap_or(&text);
                Err(Failure::from(transport(text)))
            }
        }
    }
}

/// What etcd's gateway says in the body of a refusal: `{"error": "...",
/// "message": "...", "code": N}`, followed by a trailer the body's reader
/// may fail on, so only the first JSON value read counts.
fn refusal(response: ureq::Response) -> String {
    let mut body = Vec::new();
    let mut reader = response.into_reader().take(64 * 1024);
    let mut chunk = [0; 4096];
    while let Ok(n @ 1..) = reader.read(&mut chunk) {
        body.extend_from_slice(&chunk[..n]);
    }
    serde_json::Deserializer::from_slice(&body)
        .into_iter::<Value>()
        .next()
        .and_then(Result::ok)
        .and_then(|answer| answer["message"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A transport error, with what to do when TLS says why.
fn transport(message: &str) -> String {
    if message.contains("CertificateRequired") || message.contains("BadCertificate") {
        format!(
            "{message}: the server wants a client certificate it trusts; give --etcd-cert and --etcd-key (cert and key in [fleet])"
        )
    } else if message.contains("UnknownIssuer") {
        format!(
            "{message}: the server's certificate is not signed by a CA this host trusts; give its CA with --etcd-cacert (cacert in [fleet])"
        )
    } else {
        message.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_is_read() {
        let dir = std::env::temp_dir().join(format!("spacefilter-login-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let login = Login::read("sf", &file).unwrap();
        assert_eq!((login.user(), login.password.as_str()), ("sf", "s3cret"));
        assert!(!format!("{login:?}").contains("s3cret"));
        std::fs::write(&file, "\n").unwrap();
        let err = Login::read("sf", &file).unwrap_err();
        assert!(err.starts_with("--etcd-password-file"), "{err}");
        let err = Login::read("sf", &dir.join("none")).unwrap_err();
        assert!(err.starts_with("--etcd-password-file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refused_tokens_are_told_apart() {
        assert!(token_refused("etcdserver: invalid auth token"));
        assert!(token_refused(
            "rpc error: code = InvalidArgument desc = etcdserver: user name is empty"
        ));
        assert!(!token_refused("etcdserver: permission denied"));
    }
}
