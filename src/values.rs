//! Values: the user choices of the rendered tree (`contexts/values.yaml`), each typed and
//! checked before a mount starts. `--values FILE` and `--set key=value` override the
//! defaults; the effective values become template variables (camelCase keys,
//! snake_case variables).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

use crate::render::{quote, Value};

/// The type of a value, as written in values.yaml.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Kind {
    Cidr,
    Host,
    DnsName,
    Int { min: i64, max: i64 },
    Enum { choices: Vec<String> },
    Args,
    CniVersion,
}

/// One entry of values.yaml.
#[derive(Clone, Debug, Deserialize)]
pub struct Spec {
    #[serde(flatten)]
    pub kind: Kind,
    #[serde(default)]
    pub default: Option<String>,
    pub help: String,
}

/// The whole data file, in key order.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct ValueSpecs(BTreeMap<String, Spec>);

/// An effective value.
#[derive(Clone, Debug, PartialEq)]
pub enum Effective {
    Text(String),
    Args(Vec<(String, String)>),
}

/// The effective values of one mount, by key.
pub type Values = BTreeMap<String, Effective>;

impl ValueSpecs {
    pub fn parse(yaml: &[u8]) -> Result<Self, String> {
        serde_yaml::from_slice(yaml).map_err(|e| format!("values.yaml: {e}"))
    }

    pub fn keys(&self) -> impl Iterator<Item = (&String, &Spec)> {
        self.0.iter()
    }

    /// The effective values: defaults, then `overrides` in order (`key` or `key.entry`
    /// for args), each checked against its type. `cni_versions` are the releases of the
    /// mount's CNI whose range holds the Kubernetes version (the first is the default).
    pub fn resolve(
        &self,
        overrides: &[(String, String)],
        cni_versions: &[String],
    ) -> Result<Values, String> {
        let mut values = Values::new();
        for (key, spec) in &self.0 {
            let value = match (&spec.kind, &spec.default) {
                (Kind::Args, _) => Effective::Args(Vec::new()),
                (Kind::CniVersion, _) => {
                    Effective::Text(cni_versions.first().cloned().unwrap_or_default())
                }
                (_, Some(default)) => Effective::Text(default.clone()),
                (_, None) => return Err(format!("values.yaml: {key} has no default")),
            };
            values.insert(key.clone(), value);
        }
        for (path, text) in overrides {
            let (key, entry) = match path.split_once('.') {
                Some((key, entry)) => (key, Some(entry)),
                None => (path.as_str(), None),
            };
            let spec = self.0.get(key).ok_or_else(|| {
                format!(
                    "unknown value {}: expected one of {}",
                    quote(key),
                    self.0.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            let bad = |why: String| format!("invalid value for {path}: {} ({why})", quote(text));
            match (&spec.kind, entry) {
                (Kind::Args, Some(flag)) => {
                    check_flag(flag).map_err(|w| format!("invalid value key {path}: {w}"))?;
                    check_arg_value(text).map_err(bad)?;
                    if let Some(Effective::Args(args)) = values.get_mut(key) {
                        args.retain(|(f, _)| f != flag);
                        args.push((flag.to_string(), text.clone()));
                    }
                }
                (Kind::Args, None) => {
                    return Err(format!(
                        "{key} is a map of flags: set one with --set {key}.FLAG=VALUE"
                    ))
                }
                (_, Some(_)) => return Err(format!("{key} is not a map: --set {key}=VALUE")),
                (Kind::CniVersion, None) => {
                    if !cni_versions.contains(text) {
                        return Err(bad(if cni_versions.is_empty() {
                            "no CNI is bundled (--cni none)".into()
                        } else {
                            format!(
                                "releases for this Kubernetes version: {}",
                                cni_versions.join(", ")
                            )
                        }));
                    }
                    values.insert(key.to_string(), Effective::Text(text.clone()));
                }
                (kind, None) => {
                    check(kind, text).map_err(bad)?;
                    values.insert(key.to_string(), Effective::Text(text.clone()));
                }
            }
        }
        Ok(values)
    }
}

/// `podSubnet` -> `pod_subnet`.
pub fn variable_name(key: &str) -> String {
    let mut name = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            name.push('_');
            name.push(c.to_ascii_lowercase());
        } else {
            name.push(c);
        }
    }
    name
}

/// The template variable of a value.
pub fn template_value(value: &Effective) -> Value {
    match value {
        Effective::Text(t) => Value::Str(t.clone()),
        Effective::Args(a) => Value::Map(a.clone()),
    }
}

/// `--values FILE`: a YAML mapping of keys to scalars, or to maps of flags for args.
pub fn parse_values_file(yaml: &[u8]) -> Result<Vec<(String, String)>, String> {
    let doc: serde_yaml::Value =
        serde_yaml::from_slice(yaml).map_err(|e| format!("not YAML: {e}"))?;
    let map = match doc {
        serde_yaml::Value::Null => return Ok(Vec::new()),
        serde_yaml::Value::Mapping(m) => m,
        _ => return Err("expected a mapping of value keys".into()),
    };
    let scalar = |v: &serde_yaml::Value| -> Option<String> {
        match v {
            serde_yaml::Value::String(s) => Some(s.clone()),
            serde_yaml::Value::Number(n) => Some(n.to_string()),
            serde_yaml::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    };
    let mut out = Vec::new();
    for (key, value) in map {
        let key = scalar(&key).ok_or("keys must be strings")?;
        match &value {
            serde_yaml::Value::Mapping(entries) => {
                for (flag, v) in entries {
                    let flag =
                        scalar(flag).ok_or_else(|| format!("{key}: flags must be strings"))?;
                    let v = scalar(v)
                        .ok_or_else(|| format!("{key}.{flag}: expected a string or number"))?;
                    out.push((format!("{key}.{flag}"), v));
                }
            }
            v => out.push((
                key.clone(),
                scalar(v).ok_or_else(|| format!("{key}: expected a string or number"))?,
            )),
        }
    }
    Ok(out)
}

fn check(kind: &Kind, text: &str) -> Result<(), String> {
    match kind {
        Kind::Cidr => check_cidr(text),
        Kind::Host => check_host(text),
        Kind::DnsName => check_dns_name(text),
        Kind::Int { min, max } => match text.parse::<i64>() {
            Ok(n) if (*min..=*max).contains(&n) => Ok(()),
            Ok(_) => Err(format!("expected {min} to {max}")),
            Err(_) => Err("expected a whole number".into()),
        },
        Kind::Enum { choices } => {
            if choices.iter().any(|c| c == text) {
                Ok(())
            } else {
                Err(format!("expected one of {}", choices.join(", ")))
            }
        }
        Kind::Args | Kind::CniVersion => Ok(()),
    }
}

/// `ADDRESS/PREFIX`, IPv4 or IPv6, without host bits.
fn check_cidr(text: &str) -> Result<(), String> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or("expected ADDRESS/PREFIX, e.g. 10.244.0.0/16")?;
    let addr: IpAddr = addr.parse().map_err(|_| "not an IP address".to_string())?;
    let bits = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let prefix: u32 = match prefix.parse() {
        Ok(p) if p <= bits && !prefix.starts_with('+') => p,
        _ => return Err(format!("prefix must be 0 to {bits}")),
    };
    let host_bits = match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)) & (u128::MAX >> (96 + prefix.min(32))),
        IpAddr::V6(a) => u128::from(a) & u128::MAX.checked_shr(prefix).unwrap_or(0),
    };
    if host_bits != 0 {
        return Err("host bits are set (not a network address)".into());
    }
    Ok(())
}

/// `name`, `IPv4` or `[IPv6]`, with an optional `:port`.
fn check_host(text: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or("unclosed [ of an IPv6 address")?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| "not an IPv6 address inside [ ]".to_string())?;
        match after {
            "" => return Ok(()),
            a => (
                None,
                Some(a.strip_prefix(':').ok_or("expected :PORT after ]")?),
            ),
        }
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(text), None),
        }
    };
    if let Some(host) = host {
        if host.contains(':') {
            return Err("an IPv6 address needs brackets: [ADDRESS]:PORT".into());
        }
        if host.parse::<Ipv4Addr>().is_err() {
            check_dns_name(host)?;
        }
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 && !port.starts_with('+') => {}
            _ => return Err("port must be 1 to 65535".into()),
        }
    }
    Ok(())
}

fn check_dns_name(text: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if text.is_empty() || text.len() > 253 || !text.split('.').all(label_ok) {
        return Err("expected a DNS name (letters, digits, - and . only)".into());
    }
    Ok(())
}

/// A component flag name, as kubeadm's extraArgs take it (no leading dashes).
fn check_flag(flag: &str) -> Result<(), String> {
    let ok = !flag.is_empty()
        && flag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !flag.starts_with('-');
    if !ok {
        return Err(format!(
            "{}: a flag name is lowercase letters, digits and -, without leading dashes",
            quote(flag)
        ));
    }
    if flag == "feature-gates" {
        return Err("feature-gates come from versions.yaml (feature_gates)".into());
    }
    Ok(())
}

fn check_arg_value(text: &str) -> Result<(), String> {
    if text.chars().any(char::is_control) {
        return Err("control characters are not allowed".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> ValueSpecs {
        ValueSpecs::parse(crate::layers::embedded_file("values.yaml").unwrap()).unwrap()
    }

    fn set(pairs: &[(&str, &str)]) -> Result<Values, String> {
        let overrides: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        specs().resolve(&overrides, &["v3.22.1".to_string()])
    }

    #[test]
    fn defaults_and_overrides() {
        let v = set(&[]).unwrap();
        assert_eq!(v["podSubnet"], Effective::Text("100.64.0.0/10".into()));
        assert_eq!(v["cniVersion"], Effective::Text("v3.22.1".into()));
        let v = set(&[
            ("podSubnet", "10.244.0.0/16"),
            ("apiServerExtraArgs.max-requests-inflight", "800"),
            ("registryDomain", "[::1]:5000"),
        ])
        .unwrap();
        assert_eq!(v["podSubnet"], Effective::Text("10.244.0.0/16".into()));
        assert_eq!(
            v["apiServerExtraArgs"],
            Effective::Args(vec![("max-requests-inflight".into(), "800".into())])
        );
        assert_eq!(variable_name("apiServerExtraArgs"), "api_server_extra_args");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (key, value, needle) in [
            ("podSubnet", "10.244.0.1/16", "host bits"),
            ("podSubnet", "10.244.0.0", "ADDRESS/PREFIX"),
            ("podSubnet", "10.244.0.0/33", "prefix"),
            ("serviceSubnet", "fd00::/200", "prefix"),
            ("registryDomain", "::1:5000", "brackets"),
            ("registryDomain", "sea.hub:70000", "port"),
            ("registryDomain", "bad domain", "DNS name"),
            ("clusterDomain", "a..b", "DNS name"),
            ("maxPods", "5", "10 to 2000"),
            ("proxyMode", "userspace", "ipvs, iptables"),
            ("cniVersion", "v3.99.0", "v3.22.1"),
            (
                "apiServerExtraArgs.feature-gates",
                "x=true",
                "versions.yaml",
            ),
            ("apiServerExtraArgs.--v", "2", "leading dashes"),
            ("apiServerExtraArgs", "x", "--set apiServerExtraArgs.FLAG"),
            ("nope", "x", "unknown value"),
        ] {
            let err = set(&[(key, value)]).unwrap_err();
            assert!(err.contains(key.split('.').next().unwrap()), "{key}: {err}");
            assert!(err.contains(needle), "{key}={value}: {err}");
        }
        assert!(set(&[("serviceSubnet", "fd00:10:96::/108")]).is_ok());
    }

    #[test]
    fn values_files_flatten_maps() {
        let pairs = parse_values_file(
            b"podSubnet: 10.244.0.0/16\nmaxPods: 200\nkubeletExtraArgs:\n  v: 2\n",
        )
        .unwrap();
        assert_eq!(
            pairs,
            vec![
                ("podSubnet".to_string(), "10.244.0.0/16".to_string()),
                ("maxPods".into(), "200".into()),
                ("kubeletExtraArgs.v".into(), "2".into()),
            ]
        );
        assert!(parse_values_file(b"- a\n").is_err());
    }
}
