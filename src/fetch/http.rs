//! HTTP for `fetch`, on reqwest's blocking client: small checksum files, and resumable
//! downloads into a partial file. Every wait (connect, headers, each read of the body)
//! has a timeout, so a stalled server fails clearly; transient failures are retried
//! with backoff, and a download that breaks off resumes where it stopped with a
//! `Range` request.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;

/// Why a request failed, and whether trying again can help.
#[derive(Debug)]
pub struct HttpError {
    pub message: String,
    /// Retrying cannot help (404, a full disk).
    pub permanent: bool,
}

impl HttpError {
    fn transient(message: String) -> Self {
        HttpError {
            message,
            permanent: false,
        }
    }

    fn permanent(message: String) -> Self {
        HttpError {
            message,
            permanent: true,
        }
    }
}

/// The HTTP side of fetch: one client (connection pool) shared by all workers.
#[derive(Debug)]
pub struct Http {
    client: Client,
    timeout: Duration,
    /// Attempts per request, at least 1.
    attempts: u32,
}

/// Biggest checksum file read into memory.
const SMALL_LIMIT: u64 = 4 << 20;

impl Http {
    pub fn new(timeout: Duration, attempts: u32) -> Result<Self, String> {
        let client = Client::builder()
            .connect_timeout(timeout)
            // Per wait, not per request: the headers, then each read of the body.
            .timeout(timeout)
            .user_agent(concat!("rootfs-mount/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up HTTP: {e}"))?;
        Ok(Http {
            client,
            timeout,
            attempts: attempts.max(1),
        })
    }

    /// Runs `op` until it succeeds, fails permanently or runs out of attempts, waiting
    /// 0.5 s, 1 s, 2 s, ... (at most 8 s) in between.
    fn retry<T>(
        &self,
        mut op: impl FnMut() -> Result<T, HttpError>,
        log: &dyn Fn(&str),
    ) -> Result<T, HttpError> {
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(e) if e.permanent || attempt >= self.attempts => return Err(e),
                Err(e) => {
                    log(&format!(
                        "{} (attempt {attempt} of {}, retrying in {:.1} s)",
                        e.message,
                        self.attempts,
                        delay.as_secs_f64()
                    ));
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(8));
                    attempt += 1;
                }
            }
        }
    }

    fn send(&self, url: &str, range_from: u64) -> Result<Response, HttpError> {
        let mut request = self.client.get(url);
        if range_from > 0 {
            request = request.header(RANGE, format!("bytes={range_from}-"));
        }
        request.send().map_err(|e| self.describe(url, &e))
    }

    fn describe(&self, url: &str, e: &reqwest::Error) -> HttpError {
        let what = if e.is_timeout() {
            format!(
                "{url}: no answer within {} s (the server stalled)",
                self.timeout.as_secs_f64()
            )
        } else if e.is_connect() {
            format!("{url}: cannot connect: {}", root_cause(e))
        } else {
            format!("{url}: {}", root_cause(e))
        };
        HttpError::transient(what)
    }

    /// A small text file (a checksum file), whole.
    pub fn get_text(&self, url: &str, log: &dyn Fn(&str)) -> Result<String, HttpError> {
        self.retry(
            || {
                let response = self.send(url, 0)?;
                check_status(url, response.status())?;
                let mut body = Vec::new();
                response
                    .take(SMALL_LIMIT + 1)
                    .read_to_end(&mut body)
                    .map_err(|e| HttpError::transient(format!("{url}: reading: {e}")))?;
                if body.len() as u64 > SMALL_LIMIT {
                    return Err(HttpError::permanent(format!(
                        "{url}: larger than {} MiB, not a checksum file",
                        SMALL_LIMIT >> 20
                    )));
                }
                String::from_utf8(body)
                    .map_err(|_| HttpError::permanent(format!("{url}: not text")))
            },
            log,
        )
    }

    /// Downloads `url` into `part`, resuming from what `part` already holds. Returns
    /// when the server has sent the whole body; the caller checks the digest.
    /// `progress(done, total)` is called as bytes arrive.
    pub fn download(
        &self,
        url: &str,
        part: &Path,
        progress: &dyn Fn(u64, Option<u64>),
        log: &dyn Fn(&str),
    ) -> Result<(), HttpError> {
        self.retry(|| self.download_once(url, part, progress), log)
    }

    fn download_once(
        &self,
        url: &str,
        part: &Path,
        progress: &dyn Fn(u64, Option<u64>),
    ) -> Result<(), HttpError> {
        let local = |e: std::io::Error| local_error(part, e);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(part)
            .map_err(local)?;
        let have = file.seek(SeekFrom::End(0)).map_err(local)?;
        let response = self.send(url, have)?;
        let status = response.status();
        let mut done = match status {
            StatusCode::PARTIAL_CONTENT => {
                let start = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_start);
                if start != Some(have) {
                    // Not the range asked for: start over.
                    file.set_len(0).map_err(local)?;
                    return Err(HttpError::transient(format!(
                        "{url}: answered a Range request from {have} with another range; starting over"
                    )));
                }
                have
            }
            StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => {
                // The partial file already holds the whole body (or more): the digest
                // check decides.
                return Ok(());
            }
            _ => {
                check_status(url, status)?;
                // A full body (a server without Range support): start from zero.
                file.set_len(0).map_err(local)?;
                file.seek(SeekFrom::Start(0)).map_err(local)?;
                0
            }
        };
        let total = response.content_length().map(|len| len + done);
        progress(done, total);
        let mut body = response;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = file.sync_data();
                    let cause = root_cause(&e);
                    let reason = if e.kind() == std::io::ErrorKind::TimedOut
                        || cause.contains("timed out")
                    {
                        format!(
                            "no data for {} s (the server stalled)",
                            self.timeout.as_secs_f64()
                        )
                    } else if cause.contains("end of file before message length") {
                        let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
                        return Err(HttpError::transient(format!(
                            "{url}: truncated response: the connection closed after {done}{of} bytes"
                        )));
                    } else {
                        format!("connection lost: {cause}")
                    };
                    return Err(HttpError::transient(format!(
                        "{url}: {reason} after {done} bytes"
                    )));
                }
            };
            file.write_all(&buf[..n]).map_err(local)?;
            done += n as u64;
            progress(done, total);
        }
        if let Some(total) = total {
            if done < total {
                let _ = file.sync_data();
                return Err(HttpError::transient(format!(
                    "{url}: truncated response: {done} of {total} bytes"
                )));
            }
        }
        file.sync_all().map_err(local)?;
        Ok(())
    }
}

/// 2xx is fine; 404 and other client errors are permanent (except 408 and 429), server
/// errors transient.
fn check_status(url: &str, status: StatusCode) -> Result<(), HttpError> {
    if status.is_success() {
        return Ok(());
    }
    let message = format!("{url}: HTTP {status}");
    if status.is_client_error()
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::TOO_MANY_REQUESTS
    {
        Err(HttpError::permanent(message))
    } else {
        Err(HttpError::transient(message))
    }
}

/// `bytes START-END/TOTAL` -> START.
fn content_range_start(value: &str) -> Option<u64> {
    let range = value.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}

/// A local write failure: permanent, and says what to do about a full disk.
fn local_error(part: &Path, e: std::io::Error) -> HttpError {
    let hint = if e.raw_os_error() == Some(libc::ENOSPC) {
        "; free space there or use another --cache"
    } else {
        ""
    };
    HttpError::permanent(format!("writing {}: {e}{hint}", part.display()))
}

/// The innermost error of a chain: "connection refused" rather than "error sending
/// request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(content_range_start("bytes 100-199/200"), Some(100));
        assert_eq!(content_range_start("bytes */200"), None);
        assert_eq!(content_range_start("items 1-2/3"), None);
    }
}
