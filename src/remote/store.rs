//! The object store a remote cache lives in: an S3 bucket (AWS, or an S3-compatible store
//! through `--s3-endpoint`) or a static HTTP(S) mirror written by `cache publish DIR`.
//!
//! Requests are signed by `rusty-s3` (sans-IO: presigned URLs, so our one HTTP stack,
//! reqwest, sends them) and never logged: a presigned URL is a bearer token, so messages
//! name objects as `s3://bucket/key`, never by URL, and reqwest's errors are shown
//! without their URL. Credentials are read from the standard AWS environment variables
//! and files ([`credentials`]) and never shown.
//!
//! Faults: each attempt has its own timeout; a dropped connection, a timeout or a 5xx is
//! retried with backoff until the store's total wait ([`Store::deadline`], `--remote-timeout`)
//! is spent; then the read fails (the caller answers EIO). A 404, 403 or a changed object
//! (another ETag than at mount, or 412 to `If-Match`) fails at once.

use std::io::Read;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, Response};
use reqwest::header::{ETAG, IF_MATCH, RANGE};
use reqwest::StatusCode;
pub use rusty_s3::Credentials;
use rusty_s3::{Bucket, S3Action, UrlStyle};

/// How long a presigned request stays valid (it is made right before it is sent).
const SIGNED_FOR: Duration = Duration::from_secs(3600);
/// Wait for one attempt (headers, then each read of the body).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP clients (each with its runtime thread) taken in turn: one per read-ahead worker
/// and one for the readers.
const CLIENTS: usize = 5;
/// Largest object read whole into memory (SHA256SUMS, manifests, block digests).
pub const SMALL_LIMIT: u64 = 64 << 20;

/// Where a remote cache is, as given to `--cache`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// `s3://BUCKET/PREFIX`: keys are `PREFIX/<cache path>`.
    S3 { bucket: String, prefix: String },
    /// `https://HOST/PATH/` (or `http://`): `<URL><cache path>`.
    Mirror { base: String },
}

impl Location {
    /// `Some` when `text` is a URL (`s3://`, `http://`, `https://`) rather than a folder.
    pub fn parse(text: &str) -> Option<Result<Location, String>> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = prefix.trim_matches('/');
            let ok_bucket = !bucket.is_empty()
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c));
            return Some(if ok_bucket {
                Ok(Location::S3 {
                    bucket: bucket.to_string(),
                    prefix: prefix.to_string(),
                })
            } else {
                Err(format!(
                    "bad --cache {text:?}: expected s3://BUCKET/PREFIX (a bucket name is lowercase letters, digits, '.' and '-')"
                ))
            });
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            let base = if text.ends_with('/') {
                text.to_string()
            } else {
                format!("{text}/")
            };
            return Some(match reqwest::Url::parse(&base) {
                // A user name or password in the address would be shown wherever the
                // mirror is named (status, logs, xattrs).
                Ok(url) if !url.username().is_empty() || url.password().is_some() => Err(
                    "bad --cache: a mirror address must not carry a user name or password (they would show in status and logs)".to_string(),
                ),
                Ok(url) if url.host_str().is_some() && url.query().is_none() => {
                    Ok(Location::Mirror { base })
                }
                _ => Err(format!(
                    "bad --cache {text:?}: expected https://HOST/PATH/ (a mirror written by `rootfs-mount cache publish`)"
                )),
            });
        }
        None
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Location::Mirror { base } => f.write_str(base.trim_end_matches('/')),
        }
    }
}

/// Why a request failed, and whether trying again can help.
#[derive(Clone, Debug)]
pub struct StoreError {
    pub message: String,
    pub permanent: bool,
    /// The object is absent (404).
    pub missing: bool,
}

impl StoreError {
    fn transient(message: String) -> Self {
        StoreError {
            message,
            permanent: false,
            missing: false,
        }
    }

    fn permanent(message: String) -> Self {
        StoreError {
            message,
            permanent: true,
            missing: false,
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The signing side of an S3 store.
struct S3 {
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
}

/// One object store, shared by everything a mount reads.
pub struct Store {
    location: Location,
    s3: Option<S3>,
    /// Made on first use: the mount lists the store before it forks, and no thread (the
    /// clients') may exist then. Several: a blocking client moves every byte of its
    /// answers through its one runtime thread, so concurrent ranged GETs on one client
    /// are not concurrent; requests take the clients in turn.
    clients: OnceLock<Result<Vec<Client>, String>>,
    next_client: std::sync::atomic::AtomicUsize,
    deadline: Duration,
    /// ETags seen per key (mirrors list none at mount: the first answer pins it).
    etags: Mutex<std::collections::HashMap<String, String>>,
}

impl std::fmt::Debug for Store {
    // No credentials, ever.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.location.to_string())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store at `location`; `endpoint` for an S3-compatible store (else AWS, or
    /// `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`). `deadline`: the longest a read waits
    /// for a store that does not answer.
    pub fn new(
        location: Location,
        endpoint: Option<&str>,
        deadline: Duration,
    ) -> Result<Self, String> {
        let credentials = match &location {
            Location::S3 { .. } => Some(super::credentials::credentials()?),
            Location::Mirror { .. } => None,
        };
        Self::with_credentials(
            location,
            endpoint,
            deadline,
            credentials,
            &super::credentials::region(),
        )
    }

    /// Like [`Store::new`], with the credentials and region given (tools, tests).
    pub fn with_credentials(
        location: Location,
        endpoint: Option<&str>,
        deadline: Duration,
        credentials: Option<Credentials>,
        region: &str,
    ) -> Result<Self, String> {
        let region = region.to_string();
        let s3 = match (&location, credentials) {
            (Location::S3 { .. }, None) => return Err("no S3 credentials".into()),
            (Location::Mirror { .. }, _) => None,
            (Location::S3 { bucket, prefix }, Some(credentials)) => {
                let env_endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
                    .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
                    .ok()
                    .filter(|e| !e.trim().is_empty());
                let (endpoint, style) = match endpoint.map(str::to_string).or(env_endpoint) {
                    Some(e) => (e, UrlStyle::Path),
                    None => (
                        format!("https://s3.{region}.amazonaws.com"),
                        UrlStyle::VirtualHost,
                    ),
                };
                let url = reqwest::Url::parse(&endpoint)
                    .map_err(|e| format!("bad --s3-endpoint {endpoint:?}: {e}"))?;
                let bucket = Bucket::new(url, style, bucket.clone(), region)
                    .map_err(|e| format!("bad bucket or endpoint: {e}"))?;
                Some(S3 {
                    bucket,
                    credentials,
                    prefix: prefix.clone(),
                })
            }
        };
        Ok(Store {
            location,
            s3,
            clients: OnceLock::new(),
            next_client: Default::default(),
            deadline,
            etags: Mutex::new(Default::default()),
        })
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The longest a read waits for the store, retries included.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    fn client(&self) -> Result<&Client, StoreError> {
        let clients = self
            .clients
            .get_or_init(|| {
                (0..CLIENTS)
                    .map(|_| {
                        Client::builder()
                            .connect_timeout(Duration::from_secs(3).min(self.deadline))
                            .timeout(ATTEMPT_TIMEOUT.min(self.deadline))
                            .user_agent(concat!("rootfs-mount/", env!("CARGO_PKG_VERSION")))
                            .build()
                            .map_err(|e| format!("cannot set up HTTP: {e}"))
                    })
                    .collect()
            })
            .as_ref()
            .map_err(|e| StoreError::permanent(e.clone()))?;
        let turn = self
            .next_client
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        clients
            .get(turn % clients.len())
            .ok_or_else(|| StoreError::permanent("no HTTP client".into()))
    }

    /// The key of the cache path `rel`.
    fn key(&self, rel: &str) -> String {
        match &self.s3 {
            Some(s3) if !s3.prefix.is_empty() => format!("{}/{rel}", s3.prefix),
            _ => rel.to_string(),
        }
    }

    /// How `rel` is named in messages and provenance (no URL, no signature).
    pub fn shown(&self, rel: &str) -> String {
        match &self.location {
            Location::S3 { bucket, .. } => format!("s3://{bucket}/{}", self.key(rel)),
            Location::Mirror { base } => format!("{base}{rel}"),
        }
    }

    fn get_url(&self, rel: &str) -> String {
        match (&self.s3, &self.location) {
            (Some(s3), _) => s3
                .bucket
                .get_object(Some(&s3.credentials), &self.key(rel))
                .sign(SIGNED_FOR)
                .to_string(),
            (None, Location::Mirror { base }) => format!("{base}{}", encode_path(rel)),
            (None, Location::S3 { .. }) => unreachable!("an S3 location always has its signer"),
        }
    }

    /// Pins the ETag of `rel` (from the listing, at mount).
    pub fn pin_etag(&self, rel: &str, etag: String) {
        lock(&self.etags).insert(rel.to_string(), etag);
    }

    /// Runs `op` until it succeeds, fails permanently or the deadline passes.
    fn retry<T>(
        &self,
        what: &str,
        mut op: impl FnMut() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match op() {
                Ok(v) => return Ok(v),
                Err(e) if e.permanent => return Err(e),
                Err(e) => {
                    let spent = started.elapsed();
                    if spent + delay >= self.deadline {
                        return Err(StoreError::transient(format!(
                            "{what}: {} ({attempts} attempts in {:.1} s, the store's wait limit is {} s: --remote-timeout)",
                            e.message,
                            spent.as_secs_f64(),
                            self.deadline.as_secs_f64()
                        )));
                    }
                    tracing::debug!(object = what, error = %e.message, attempts, "retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn check_status(&self, what: &str, response: &Response) -> Result<(), StoreError> {
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let message = format!("{what}: the store answered {status}");
        Err(match status {
            StatusCode::NOT_FOUND => StoreError {
                message,
                permanent: true,
                missing: true,
            },
            StatusCode::PRECONDITION_FAILED => StoreError::permanent(format!(
                "{what}: the object changed under the mount (its ETag differs from the mount's); remount to see the new one"
            )),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                StoreError::transient(message)
            }
            _ => StoreError::permanent(message),
        })
    }

    /// Checks the answer's ETag against the one pinned for `rel`, pinning it if none.
    fn check_etag(&self, rel: &str, what: &str, response: &Response) -> Result<(), StoreError> {
        let Some(seen) = response.headers().get(ETAG).and_then(|v| v.to_str().ok()) else {
            return Ok(());
        };
        let mut etags = lock(&self.etags);
        match etags.get(rel) {
            Some(pinned) if pinned.trim_matches('"') != seen.trim_matches('"') => {
                Err(StoreError::permanent(format!(
                    "{what}: the object changed under the mount (ETag {seen}, {pinned} at mount); remount to see the new one"
                )))
            }
            Some(_) => Ok(()),
            None => {
                etags.insert(rel.to_string(), seen.to_string());
                Ok(())
            }
        }
    }

    /// `len` bytes at `start` of `rel` (exactly: a short answer is an error).
    pub fn get_range(&self, rel: &str, start: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let what = self.shown(rel);
        self.retry(&what, || {
            let client = self.client()?;
            let mut request = client
                .get(self.get_url(rel))
                .header(RANGE, format!("bytes={start}-{}", start + len - 1));
            if let Some(etag) = lock(&self.etags).get(rel) {
                let quoted = if etag.starts_with('"') || etag.starts_with("W/") {
                    etag.clone()
                } else {
                    format!("\"{etag}\"")
                };
                request = request.header(IF_MATCH, quoted);
            }
            let response = request.send().map_err(|e| describe(&what, e))?;
            self.check_status(&what, &response)?;
            self.check_etag(rel, &what, &response)?;
            if response.status() == StatusCode::OK && start > 0 {
                // A server that ignores Range would send the whole object for every
                // block: refused rather than read (and held) up to the block each time.
                return Err(StoreError::permanent(format!(
                    "{what}: the server ignores Range requests (answered 200 to a ranged GET); serve the mirror with a server that answers 206, such as nginx"
                )));
            }
            let mut body = Vec::with_capacity(len as usize);
            response
                .take(len)
                .read_to_end(&mut body)
                .map_err(|e| StoreError::transient(format!("{what}: reading the answer: {e}")))?;
            if body.len() as u64 != len {
                return Err(StoreError::transient(format!(
                    "{what}: {} bytes at {start} where {len} were asked for (the connection was cut?)",
                    body.len()
                )));
            }
            Ok(body)
        })
    }

    /// A small object whole; `Ok(None)` when it is absent.
    pub fn get_small(&self, rel: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let what = self.shown(rel);
        let got = self.retry(&what, || {
            let response = self
                .client()?
                .get(self.get_url(rel))
                .send()
                .map_err(|e| describe(&what, e))?;
            self.check_status(&what, &response)?;
            let mut body = Vec::new();
            response
                .take(SMALL_LIMIT + 1)
                .read_to_end(&mut body)
                .map_err(|e| StoreError::transient(format!("{what}: reading the answer: {e}")))?;
            if body.len() as u64 > SMALL_LIMIT {
                return Err(StoreError::permanent(format!(
                    "{what}: larger than {} MiB",
                    SMALL_LIMIT >> 20
                )));
            }
            Ok(body)
        });
        match got {
            Ok(body) => Ok(Some(body)),
            Err(e) if e.missing => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every object below the prefix: cache path, size and ETag (S3 only; a mirror lists
    /// nothing, its SHA256SUMS and manifest say what it holds).
    pub fn list(&self) -> Result<Vec<(String, u64, Option<String>)>, StoreError> {
        let Some(s3) = &self.s3 else {
            return Ok(Vec::new());
        };
        let what = self.location.to_string();
        let prefix = if s3.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", s3.prefix)
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let text = self.retry(&what, || {
                let mut action = s3.bucket.list_objects_v2(Some(&s3.credentials));
                if !prefix.is_empty() {
                    action.with_prefix(prefix.as_str());
                }
                if let Some(t) = &token {
                    action.with_continuation_token(t.as_str());
                }
                let response = self
                    .client()?
                    .get(action.sign(SIGNED_FOR).to_string())
                    .send()
                    .map_err(|e| describe(&what, e))?;
                self.check_status(&format!("listing {what}"), &response)?;
                response
                    .text()
                    .map_err(|e| StoreError::transient(format!("listing {what}: {e}")))
            })?;
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&text).map_err(|e| {
                StoreError::permanent(format!("listing {what}: cannot parse the answer: {e}"))
            })?;
            for object in page.contents {
                if let Some(rel) = object.key.strip_prefix(&prefix) {
                    out.push((
                        rel.to_string(),
                        object.size.unwrap_or(0),
                        object.etag.map(|e| e.trim_matches('"').to_string()),
                    ));
                }
            }
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        Ok(out)
    }

    /// Uploads `bytes` as `rel` (S3 only).
    pub fn put(&self, rel: &str, body: reqwest::blocking::Body) -> Result<(), StoreError> {
        let Some(s3) = &self.s3 else {
            return Err(StoreError::permanent(
                "an HTTP mirror is written with `cache publish DIR` and served as files".into(),
            ));
        };
        let what = self.shown(rel);
        let url = s3
            .bucket
            .put_object(Some(&s3.credentials), &self.key(rel))
            .sign(SIGNED_FOR);
        let response = self
            .client()?
            .put(url.to_string())
            .body(body)
            .send()
            .map_err(|e| describe(&what, e))?;
        self.check_status(&what, &response)
    }

    /// Uploads the file at `path` as `rel`, retrying until the deadline.
    pub fn put_file(&self, rel: &str, path: &Path) -> Result<(), StoreError> {
        let what = self.shown(rel);
        self.retry(&what, || {
            let file = std::fs::File::open(path).map_err(|e| {
                StoreError::permanent(format!("cannot read {}: {e}", path.display()))
            })?;
            let len = file
                .metadata()
                .map_err(|e| StoreError::permanent(format!("{}: {e}", path.display())))?
                .len();
            self.put(rel, reqwest::blocking::Body::sized(file, len))
        })
    }

    pub fn put_bytes(&self, rel: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let what = self.shown(rel);
        self.retry(&what, || {
            self.put(rel, reqwest::blocking::Body::from(bytes.to_vec()))
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A transport error, without the request's URL (it may carry a signature).
fn describe(what: &str, e: reqwest::Error) -> StoreError {
    let kind = if e.is_timeout() {
        "no answer in time"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "transfer failed"
    };
    let e = e.without_url();
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    StoreError::transient(format!("{what}: {kind} ({cause})"))
}

/// `rel` with each path segment percent-encoded (mirror URLs).
fn encode_path(rel: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    rel.split('/')
        .map(|s| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        assert_eq!(
            Location::parse("s3://builds/cache/v1/").unwrap().unwrap(),
            Location::S3 {
                bucket: "builds".into(),
                prefix: "cache/v1".into()
            }
        );
        assert!(Location::parse("s3://Bad_Bucket/x").unwrap().is_err());
        assert_eq!(
            Location::parse("http://127.0.0.1:8080/m").unwrap().unwrap(),
            Location::Mirror {
                base: "http://127.0.0.1:8080/m/".into()
            }
        );
        assert!(Location::parse("/var/cache/rootfs-mount").is_none());
        let with_password = Location::parse("https://u:secret@127.0.0.1/m/").unwrap();
        assert!(!with_password.unwrap_err().contains("secret"));
        assert!(Location::parse("https://u@127.0.0.1/m/").unwrap().is_err());
        assert_eq!(encode_path("a b/c+d"), "a%20b/c%2Bd");
    }

    /// A server on 127.0.0.1 that answers its connections, in turn, with `answers` (the
    /// whole bytes written after the request head), and a store of mirror `/m/` on it.
    fn serve(answers: Vec<Vec<u8>>) -> (Store, std::thread::JoinHandle<()>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            // Answers first: zip stops without waiting for a connection past the last.
            for (answer, conn) in answers.into_iter().zip(listener.incoming()) {
                let mut conn = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap() > 2 {
                    line.clear();
                }
                // The client may hang up as soon as it has seen enough.
                let _ = conn.write_all(&answer);
            }
        });
        let store = Store::new(
            Location::parse(&format!("http://127.0.0.1:{port}/m/"))
                .unwrap()
                .unwrap(),
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        (store, server)
    }

    /// A connection cut mid-body is retried; the bytes come whole from the next one.
    #[test]
    fn a_dropped_connection_is_retried() {
        let body: Vec<u8> = (0..100u8).collect();
        let head = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 100\r\nContent-Range: bytes 0-99/100\r\nConnection: close\r\n\r\n";
        let (store, server) = serve(vec![
            [&head[..], &body[..50]].concat(),
            [&head[..], &body[..]].concat(),
        ]);
        assert_eq!(store.get_range("f", 0, 100).unwrap(), body);
        server.join().unwrap();
    }

    /// A server that answers a ranged GET with the whole object is refused once, by a
    /// permanent error, not read up to the block for every block.
    #[test]
    fn a_server_that_ignores_range_is_refused() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n";
        let (store, server) = serve(vec![[&head[..], &[7u8; 100][..]].concat()]);
        let err = store.get_range("f", 50, 10).unwrap_err();
        assert!(
            err.permanent && err.message.contains("ignores Range"),
            "{}",
            err.message
        );
        server.join().unwrap();
    }
}
