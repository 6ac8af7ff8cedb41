//! The variables a mount renders its templates with (docs/TEMPLATES.md): a version's
//! profile, the sealer generation and the user's values, as template variables. Apart
//! from `crate::render` so that the template language imports nothing above it.

use crate::render::{Value, Vars};
use crate::sealer::Generation;
use crate::versions::Profile;

/// The variables of docs/TEMPLATES.md for one mount.
/// `values` are the user's choices (contexts/values.yaml), already as variables; they hold
/// `registry_domain`, from which the registry's host and port are derived.
pub fn template_vars(profile: &Profile, sealer: &(String, Generation), values: Vars) -> Vars {
    let registry_domain = match values.get("registry_domain") {
        Some(Value::Str(domain)) => domain.clone(),
        _ => "sea.hub:5000".to_string(),
    };
    let registry_domain = registry_domain.as_str();
    let mut vars = values;
    let mut set = |name: &str, value: Value| {
        vars.insert(name.to_string(), value);
    };
    let s = |text: &str| Value::Str(text.to_string());
    set("k8s_version", s(&profile.version.to_string()));
    set("kubeadm_api_version", s(&profile.kubeadm_api));
    set("cri", s(&profile.cri));
    set("cri_socket", s(&profile.cri_socket));
    set("cri_version", s(&profile.cri_version));
    let (cni, cni_version, cni_images) = match &profile.cni {
        Some((name, facts)) => (name.as_str(), facts.version.as_str(), facts.images.clone()),
        None => ("none", "", Vec::new()),
    };
    set("cni", s(cni));
    set("cni_version", s(cni_version));
    // The tag of each CNI image by its last path segment (`operator`, `node`, ...), so a
    // template takes tags from the data instead of repeating them.
    let tags = cni_images
        .iter()
        .filter_map(|image| {
            let (repo, tag) = image.rsplit_once(':')?;
            Some((repo.rsplit('/').next()?.to_string(), tag.to_string()))
        })
        .collect();
    set("cni_image_tags", Value::Map(tags));
    set("cni_images", Value::List(cni_images));
    let (host, port) = split_registry_domain(registry_domain);
    set("registry_host", s(host));
    set("registry_port", s(port));
    set("upstream_registry", s(&profile.upstream_registry));
    set("pause_tag", s(&profile.images.pause));
    set("etcd_tag", s(&profile.images.etcd));
    set("coredns_tag", s(&profile.images.coredns));
    set(
        "pause_image",
        Value::Str(format!("{registry_domain}/pause:{}", profile.images.pause)),
    );
    // kubeadm looks for CoreDNS at <dns.imageRepository>/coredns:TAG once imageRepository is
    // not the upstream one. sealer stores the image under its upstream path without the
    // host (`coredns/coredns` from v1.21, `coredns` before), and sealer v0.9+ fills an
    // empty dns.imageRepository with <registry>/coredns, which is wrong before v1.21: so the
    // repository is always written, one level deeper from v1.21.
    let dns_subpath = match profile.images.coredns_path.split_once('/') {
        Some((sub, _)) => format!("/{sub}"),
        None => String::new(),
    };
    set(
        "dns_image_repository",
        Value::Str(format!("{registry_domain}{dns_subpath}")),
    );
    set("dns_image_subpath", Value::Str(dns_subpath));
    set("kube_images", Value::List(profile.kube_images()));
    let (generation, facts) = sealer;
    set("sealer_generation", s(generation));
    set("sealer_covers", s(&facts.covers));
    set("kubefile_copy", Value::List(facts.copy.clone()));
    set("lvscare_image", s(&facts.lvscare_image));
    set("clusterfile_api_version", s(&facts.clusterfile_api_version));
    set("feature_gates", Value::Str(profile.feature_gates.join(",")));
    for (name, on) in &profile.features {
        set(name, Value::Bool(*on));
    }
    vars
}

/// `host[:port]` as host and port; `[v6]:port` keeps its brackets. Without a port a client
/// reaches the registry on 443, so that is the port written.
pub fn split_registry_domain(domain: &str) -> (&str, &str) {
    let port_at = match domain.rfind(']') {
        Some(end) => domain[end..].find(':').map(|i| end + i),
        None => domain.rfind(':'),
    };
    match port_at {
        Some(i) if !domain[i + 1..].is_empty() => (&domain[..i], &domain[i + 1..]),
        _ => (domain, "443"),
    }
}

#[cfg(test)]
mod tests {
    use super::split_registry_domain;

    #[test]
    fn registry_domain_splits_into_host_and_port() {
        assert_eq!(split_registry_domain("sea.hub:5000"), ("sea.hub", "5000"));
        assert_eq!(split_registry_domain("sea.hub"), ("sea.hub", "443"));
        assert_eq!(split_registry_domain("[::1]:5000"), ("[::1]", "5000"));
        assert_eq!(split_registry_domain("[::1]"), ("[::1]", "443"));
        assert_eq!(split_registry_domain("10.0.0.1:80"), ("10.0.0.1", "80"));
    }
}
