//! Build-time rendering: the template language and the variables a mount renders with.

pub mod template;

pub use template::{quote, render, TemplateError, Value, Vars};

use crate::versions::Profile;

/// The variables of docs/TEMPLATES.md for one mount.
pub fn template_vars(profile: &Profile, registry_domain: &str) -> Vars {
    let mut vars = Vars::new();
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
    set("cni_images", Value::List(cni_images));
    set("registry_domain", s(registry_domain));
    set("upstream_registry", s(&profile.upstream_registry));
    set("pause_tag", s(&profile.images.pause));
    set("etcd_tag", s(&profile.images.etcd));
    set("coredns_tag", s(&profile.images.coredns));
    set(
        "pause_image",
        Value::Str(format!("{registry_domain}/pause:{}", profile.images.pause)),
    );
    // kubeadm only needs a DNS image repository when the image sits one level deeper
    // (`coredns/coredns`, from v1.21) than the others.
    let dns = match profile.images.coredns_path.split_once('/') {
        Some((sub, _)) => format!("{registry_domain}/{sub}"),
        None => String::new(),
    };
    set("dns_image_repository", Value::Str(dns));
    set("kube_images", Value::List(profile.kube_images()));
    set("feature_gates", Value::Str(profile.feature_gates.join(",")));
    for (name, on) in &profile.features {
        set(name, Value::Bool(*on));
    }
    vars
}
