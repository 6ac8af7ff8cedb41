//! AWS credentials and region from where every AWS tool looks: the environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_DEFAULT_REGION`, `AWS_PROFILE`), then the shared files (`~/.aws/credentials`,
//! `~/.aws/config`, or `AWS_SHARED_CREDENTIALS_FILE` / `AWS_CONFIG_FILE`). The values are
//! never shown, in messages or logs.

use std::collections::HashMap;
use std::path::PathBuf;

use rusty_s3::Credentials;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn profile() -> String {
    env("AWS_PROFILE").unwrap_or_else(|| "default".into())
}

fn aws_file(var: &str, name: &str) -> Option<PathBuf> {
    env(var)
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".aws").join(name)))
}

/// The `key = value` pairs of `[section]` of an INI file.
fn ini_section(text: &str, section: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    out
}

/// The credentials, or a one-line error saying where they were looked for.
pub fn credentials() -> Result<Credentials, String> {
    if let Some(found) = Credentials::from_env() {
        return Ok(found);
    }
    let profile = profile();
    if let Some(path) = aws_file("AWS_SHARED_CREDENTIALS_FILE", "credentials") {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let section = ini_section(&text, &profile);
            if let (Some(key), Some(secret)) = (
                section.get("aws_access_key_id"),
                section.get("aws_secret_access_key"),
            ) {
                return Ok(match section.get("aws_session_token") {
                    Some(token) => Credentials::new_with_token(key, secret, token),
                    None => Credentials::new(key, secret),
                });
            }
        }
    }
    Err(format!(
        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put them in ~/.aws/credentials (profile {profile})"
    ))
}

/// The region requests are signed for: `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's
/// `region` in `~/.aws/config`, else `us-east-1`.
pub fn region() -> String {
    if let Some(r) = env("AWS_REGION").or_else(|| env("AWS_DEFAULT_REGION")) {
        return r;
    }
    let profile = profile();
    let section = if profile == "default" {
        profile
    } else {
        format!("profile {profile}")
    };
    aws_file("AWS_CONFIG_FILE", "config")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| ini_section(&text, &section).remove("region"))
        .unwrap_or_else(|| "us-east-1".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ini_sections() {
        let text = "[default]\naws_access_key_id = A\n[other]\naws_access_key_id=B\n# c\n";
        assert_eq!(super::ini_section(text, "other")["aws_access_key_id"], "B");
        assert_eq!(
            super::ini_section(text, "default")["aws_access_key_id"],
            "A"
        );
    }
}
