//! Where images come from: an `oci-client` client on a small tokio runtime, with the
//! mirrors of [`PullOptions`]. The OCI distribution protocol (token auth, manifests, blob
//! streams, Range) is the crate's; what this file adds is the choice of mirror, plain
//! http for the hosts that ask for it, and our own digest check of every byte received.

use super::digest::{hash_file, Digest};
use super::image_name::ImageName;
use super::manifest;
use super::PullOptions;
use futures_util::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};
use std::future::Future;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// A mirror of one registry host: the `host[:port]` requests go to instead.
struct Mirror {
    host: String,
    address: String,
}

/// The client, its runtime and the mirror table of one pull.
pub struct Source {
    runtime: tokio::runtime::Runtime,
    client: Client,
    mirrors: Vec<Mirror>,
    /// At most this many blobs are downloaded at once.
    pub jobs: usize,
}

/// `http://host:port/` -> (`host:port`, plain http?). A path is refused: registries are
/// served from the root of their host.
fn split_url(url: &str) -> Result<(String, bool), String> {
    let (rest, plain) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, true)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, false)
    } else {
        (url, false)
    };
    let host = rest.trim_end_matches('/');
    if host.is_empty() || host.contains('/') {
        return Err(format!(
            "mirror {url:?}: give a registry base URL such as http://127.0.0.1:5000 (no path)"
        ));
    }
    Ok((host.to_string(), plain))
}

impl Source {
    /// The client for `opts`. Refused inside an async runtime: the pull functions are
    /// synchronous and block on their own runtime (call them from `spawn_blocking`).
    pub fn new(opts: &PullOptions) -> Result<Source, String> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(
                "image pulls block: call them outside an async runtime (e.g. in spawn_blocking)"
                    .to_string(),
            );
        }
        let mut plain_http: Vec<String> = Vec::new();
        for host in &opts.insecure {
            plain_http.push(split_url(host)?.0);
        }
        let mut mirrors = Vec::new();
        for (host, url) in &opts.mirrors {
            let (address, plain) = split_url(url)?;
            if plain {
                plain_http.push(address.clone());
            }
            mirrors.push(Mirror {
                host: host.clone(),
                address,
            });
        }
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain_http),
            platform_resolver: None,
            max_concurrent_download: opts.jobs.max(1),
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(120)),
            ..ClientConfig::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the download runtime: {e}"))?;
        // reqwest's client must be made inside a runtime.
        let client = runtime.block_on(async { Client::new(config) });
        Ok(Source {
            runtime,
            client,
            mirrors,
            jobs: opts.jobs.max(1),
        })
    }

    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// The places to ask for `name`, in order: its host's mirrors, or the host itself
    /// when it has none (a mirror replaces its host; it is not a cache in front of it).
    fn candidates(&self, name: &ImageName) -> Vec<Reference> {
        let mirrored: Vec<Reference> = self
            .mirrors
            .iter()
            .filter(|m| m.host == name.host())
            .map(|m| {
                let mut reference = name.reference.clone();
                reference.set_mirror_registry(m.address.clone());
                reference
            })
            .collect();
        if mirrored.is_empty() {
            vec![name.reference.clone()]
        } else {
            mirrored
        }
    }

    /// The manifest `name` points at (or, with `digest`, that manifest of its repository),
    /// as served, with its verified digest.
    pub async fn manifest(
        &self,
        name: &ImageName,
        digest: Option<&Digest>,
    ) -> Result<(Vec<u8>, Digest), String> {
        let mut errors = Vec::new();
        for reference in self.candidates(name) {
            let reference = match digest {
                Some(d) => reference.clone_with_digest(d.to_string()),
                None => reference,
            };
            let what = format!(
                "manifest of {} from {}",
                name.reference,
                reference.resolve_registry()
            );
            let mut attempt = 0;
            let pulled = loop {
                let pulled = self
                    .client
                    .pull_manifest_raw(&reference, &RegistryAuth::Anonymous, manifest::ACCEPTED)
                    .await;
                match pulled {
                    Err(e) if is_transient(&e) && attempt + 1 < ATTEMPTS => {
                        tracing::warn!("{what}: {e}; retrying");
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                    }
                    other => break other,
                }
            };
            match pulled {
                Ok((bytes, _)) => {
                    let got = Digest::of_bytes(&bytes);
                    match digest.or(name.digest.as_ref()) {
                        Some(want) if *want != got => errors.push(format!(
                            "{what}: content has digest {got}, expected {want}; not kept"
                        )),
                        _ => return Ok((bytes.to_vec(), got)),
                    }
                }
                Err(e) => errors.push(format!("{what}: {e}")),
            }
        }
        Err(errors.join("; "))
    }

    /// Downloads blob `digest` of `name`'s repository into `partial` and checks the whole
    /// file against `digest`. A partial file left by an interrupted run is resumed with a
    /// Range request; a download cut short is retried (resuming) a few times with backoff,
    /// and its prefix is kept for the next run. Content with the wrong digest is removed.
    pub async fn blob(
        &self,
        name: &ImageName,
        digest: &Digest,
        partial: &Path,
    ) -> Result<(), String> {
        let mut errors = Vec::new();
        for reference in self.candidates(name) {
            let what = format!(
                "blob {digest} of {} from {}",
                name.reference,
                reference.resolve_registry()
            );
            let mut attempt = 0;
            loop {
                let resumed = partial.exists();
                match self.blob_from(&reference, digest, partial).await {
                    Ok(()) => return Ok(()),
                    // A bad prefix left by an earlier run: once more from byte 0.
                    Err(Failure::Final(_)) if resumed && !partial.exists() && attempt == 0 => {
                        attempt += 1
                    }
                    Err(Failure::Retry(e)) if attempt + 1 < ATTEMPTS => {
                        tracing::warn!("{what}: {e}; retrying");
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                    }
                    Err(Failure::Retry(e) | Failure::Final(e)) => {
                        errors.push(format!("{what}: {e}"));
                        break;
                    }
                }
            }
        }
        Err(errors.join("; "))
    }

    async fn blob_from(
        &self,
        reference: &Reference,
        digest: &Digest,
        partial: &Path,
    ) -> Result<(), Failure> {
        let digest_text = digest.to_string();
        let at = |e: std::io::Error| Failure::Final(format!("{}: {e}", partial.display()));
        let request = |e: oci_client::errors::OciDistributionError| {
            if is_transient(&e) {
                Failure::Retry(e.to_string())
            } else {
                Failure::Final(e.to_string())
            }
        };
        // What an earlier run left: complete already (killed before the rename), or a
        // prefix to resume from, hashed without holding it in memory.
        let left = {
            let path = partial.to_path_buf();
            tokio::task::spawn_blocking(move || hash_file(&path).ok())
                .await
                .ok()
                .flatten()
        };
        let (have, mut hasher) = left.unwrap_or((0, Sha256::new()));
        if have > 0 && Digest::from_hasher(hasher.clone()) == *digest {
            return Ok(());
        }
        let mut received = 0u64;
        let (stream, mut file) = if have > 0 {
            let answer = self
                .client
                .pull_blob_stream_partial(reference, digest_text.as_str(), have, None)
                .await;
            let answer = match answer {
                Ok(answer) => answer,
                Err(e) if is_transient(&e) => return Err(Failure::Retry(e.to_string())),
                Err(e) => {
                    // The server refuses the range (a prefix longer than the blob, ...):
                    // the prefix goes, and the caller starts again from byte 0.
                    let _ = tokio::fs::remove_file(partial).await;
                    return Err(Failure::Final(e.to_string()));
                }
            };
            match answer {
                BlobResponse::Partial(stream) => {
                    received = have;
                    let file = tokio::fs::OpenOptions::new()
                        .append(true)
                        .open(partial)
                        .await
                        .map_err(at)?;
                    (stream, file)
                }
                BlobResponse::Full(stream) => {
                    hasher = Sha256::new();
                    (stream, create(partial).await.map_err(at)?)
                }
            }
        } else {
            let stream = self
                .client
                .pull_blob_stream(reference, digest_text.as_str())
                .await
                .map_err(request)?;
            (stream, create(partial).await.map_err(at)?)
        };
        // The full size, when the server said how long the rest is.
        let expected_size = stream.content_length.map(|n| n + received);
        let mut stream = stream.stream;
        let mut failure = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    hasher.update(&bytes);
                    received += bytes.len() as u64;
                    file.write_all(&bytes).await.map_err(at)?;
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
        file.flush().await.map_err(at)?;
        file.sync_all().await.map_err(at)?;
        drop(file);
        let got = Digest::from_hasher(hasher);
        if got == *digest {
            return Ok(());
        }
        match (failure, expected_size) {
            // Cut short: the prefix stays for a retry or the next run to resume.
            (Some(e), Some(size)) if received < size => Err(Failure::Retry(format!(
                "download cut short at {received} of {size} bytes ({e})"
            ))),
            _ => {
                let _ = tokio::fs::remove_file(partial).await;
                Err(Failure::Final(format!(
                    "content has digest {got}, expected {digest} ({received} bytes); not kept"
                )))
            }
        }
    }
}

/// Why a blob download failed: worth retrying, or not.
enum Failure {
    Retry(String),
    Final(String),
}

/// Tries per request when the network or the server fails transiently.
const ATTEMPTS: u32 = 4;

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500 << attempt.min(4))
}

/// Network failures, timeouts and 5xx/429 answers are retried; 4xx answers, auth and
/// digest errors are final.
fn is_transient(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::OciDistributionError as E;
    match e {
        E::RequestError(_) | E::IoError(_) => true,
        E::ServerError { code, .. } => *code >= 500 || *code == 429,
        _ => false,
    }
}

async fn create(path: &Path) -> std::io::Result<tokio::fs::File> {
    tokio::fs::File::create(path).await
}

impl Source {
    /// Downloads each `(image, blob, partial path)` at most [`Source::jobs`] at a time;
    /// `done` is called on each verified download (to move it into place). Every failure
    /// is reported, not only the first.
    pub async fn blobs<F>(
        &self,
        wanted: Vec<(ImageName, Digest, std::path::PathBuf)>,
        done: F,
    ) -> Result<(), String>
    where
        F: Fn(&Digest) -> Result<(), String>,
    {
        let done = &done;
        let results: Vec<Result<(), String>> = futures_util::stream::iter(wanted)
            .map(|(name, digest, partial)| async move {
                self.blob(&name, &digest, &partial).await?;
                done(&digest)
            })
            .buffer_unordered(self.jobs)
            .collect()
            .await;
        let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_urls_give_host_and_scheme() {
        assert_eq!(
            split_url("http://127.0.0.1:5001/").unwrap(),
            ("127.0.0.1:5001".to_string(), true)
        );
        assert_eq!(
            split_url("https://mirror.example").unwrap(),
            ("mirror.example".to_string(), false)
        );
        assert_eq!(
            split_url("127.0.0.1:5001").unwrap(),
            ("127.0.0.1:5001".to_string(), false)
        );
        assert!(split_url("http://host/prefix").is_err());
        assert!(split_url("http://").is_err());
    }

    #[test]
    fn refuses_to_block_inside_an_async_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let made = runtime.block_on(async { Source::new(&PullOptions::default()).map(|_| ()) });
        assert!(made.unwrap_err().contains("outside an async runtime"));
        assert!(Source::new(&PullOptions::default()).is_ok());
    }

    #[test]
    fn only_network_and_server_failures_are_retried() {
        use oci_client::errors::OciDistributionError as E;
        let server = |code| E::ServerError {
            code,
            url: String::new(),
            message: String::new(),
        };
        assert!(is_transient(&server(503)));
        assert!(is_transient(&server(429)));
        assert!(!is_transient(&server(404)));
        assert!(!is_transient(&E::ImageManifestNotFoundError(String::new())));
    }
}
