//! What each component does on the Kubernetes API, as data.
//!
//! Each controller declares the requests it makes as a list of [`Access`]; its tests against
//! the mock API check that every request it really makes is declared, and `slicectl install`
//! turns the same lists into RBAC rules. So the RBAC grants exactly what the requests need.

/// Where an access applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Cluster-scoped resources, or namespaced ones in every namespace (a ClusterRole).
    Cluster,
    /// Namespaced resources in one namespace only (a Role there): the component's own
    /// namespace, or for the worker on the hub, its cluster's namespace.
    OwnNamespace,
    /// Namespaced resources in this other, fixed namespace only (a Role there, bound to the
    /// component's ServiceAccount): the worker's gateways in `slicenet-gateway`.
    Namespace(&'static str),
    /// Namespaced resources in this fixed namespace, limited to what the Roles bound there to
    /// the component's ServiceAccount grant at the time of the request: no static rule (the
    /// installer prints none); another controller keeps those Roles as the component's rights
    /// change. The worker's read of its slices' peer pages on the hub, whose Role the hub
    /// keeps as memberships change.
    Granted(&'static str),
}

/// One kind of request: `verb` on `group`/`resource`[/`subresource`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    /// API group, "" for the core group.
    pub group: &'static str,
    /// Plural resource name, e.g. `workerslices`.
    pub resource: &'static str,
    /// Subresource, e.g. `status`, or "".
    pub subresource: &'static str,
    /// Kubernetes verb: get, list, watch, create, update, patch, delete.
    pub verb: &'static str,
    pub scope: Scope,
    /// The objects it is limited to (RBAC `resourceNames`); empty for every object. RBAC can
    /// limit `get`, `update`, `patch` and `delete` by name, never `list`, `watch` or `create`.
    pub names: &'static [&'static str],
}

impl Access {
    /// `verb` on `group`/`resource` in `scope`.
    #[must_use]
    pub const fn new(verb: &'static str, group: &'static str, resource: &'static str, scope: Scope) -> Self {
        Self { group, resource, subresource: "", verb, scope, names: &[] }
    }

    /// The same access limited to the objects `names`.
    #[must_use]
    pub const fn named(mut self, names: &'static [&'static str]) -> Self {
        self.names = names;
        self
    }

    /// The same access on a subresource.
    #[must_use]
    pub const fn sub(mut self, subresource: &'static str) -> Self {
        self.subresource = subresource;
        self
    }

    /// The RBAC resource name: `resource` or `resource/subresource`.
    #[must_use]
    pub fn rbac_resource(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.to_owned()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// The kube verb of an HTTP request, as the API server's authorizer sees it: GET on a
/// collection is `list`, or `watch` with `watch=true`; GET on an object is `get`; POST is
/// `create`; PUT `update`; PATCH `patch`; DELETE `delete` (or `deletecollection` on a
/// collection).
#[must_use]
pub fn verb_of(method: &str, is_collection: bool, query: &str) -> &'static str {
    let watch = query.split('&').any(|kv| kv == "watch=true" || kv == "watch=1");
    match (method, is_collection) {
        ("GET", true) if watch => "watch",
        ("GET", true) => "list",
        ("GET", false) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "deletecollection",
        ("DELETE", false) => "delete",
        _ => "unknown",
    }
}

/// A request as the authorizer sees it, parsed from its path: `/api/v1/...` or
/// `/apis/<group>/<version>/...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAttributes {
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub verb: &'static str,
}

/// Parses a request path and method into authorizer attributes. `None` for paths that are
/// not resource requests (discovery, `/version`).
#[must_use]
pub fn request_attributes(method: &str, path_and_query: &str) -> Option<RequestAttributes> {
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (resource, name, subresource) = match rest {
        [resource] => (*resource, None, ""),
        [resource, name] => (*resource, Some((*name).to_owned()), ""),
        [resource, name, sub] => (*resource, Some((*name).to_owned()), *sub),
        _ => return None,
    };
    let verb = verb_of(method, name.is_none(), query);
    Some(RequestAttributes {
        group,
        resource: resource.to_owned(),
        subresource: subresource.to_owned(),
        namespace,
        name,
        verb,
    })
}

/// Whether `declared` covers the request `attrs`: same group, resource, subresource and verb,
/// the object among the access's names when it has any, and a namespaced request may be covered
/// by an [`Scope::OwnNamespace`] access only when it is in `own_namespace`.
#[must_use]
pub fn covers(declared: &[Access], attrs: &RequestAttributes, own_namespace: Option<&str>) -> bool {
    declared.iter().any(|a| {
        a.group == attrs.group
            && a.resource == attrs.resource
            && a.subresource == attrs.subresource
            && a.verb == attrs.verb
            && (a.names.is_empty() || attrs.name.as_deref().is_some_and(|n| a.names.contains(&n)))
            && match a.scope {
                Scope::Cluster => true,
                Scope::OwnNamespace => attrs.namespace.is_some() && attrs.namespace.as_deref() == own_namespace,
                Scope::Namespace(ns) => attrs.namespace.as_deref() == Some(ns),
                Scope::Granted(_) => false,
            }
    })
}

/// The namespace of a [`Scope::Granted`] entry of `declared` that would cover `attrs` if the
/// Roles there grant it: whoever answers the request must then look at those Roles.
#[must_use]
pub fn granted_in(declared: &[Access], attrs: &RequestAttributes) -> Option<&'static str> {
    declared.iter().find_map(|a| match a.scope {
        Scope::Granted(ns)
            if a.group == attrs.group
                && a.resource == attrs.resource
                && a.subresource == attrs.subresource
                && a.verb == attrs.verb
                && attrs.namespace.as_deref() == Some(ns) =>
        {
            Some(ns)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_like_the_authorizer() {
        let a = request_attributes("GET", "/apis/slicenet.io/v1alpha1/namespaces/x/workerslices?watch=true").unwrap();
        assert_eq!((a.group.as_str(), a.resource.as_str(), a.verb), ("slicenet.io", "workerslices", "watch"));
        assert_eq!(a.namespace.as_deref(), Some("x"));
        let a = request_attributes("PATCH", "/apis/slicenet.io/v1alpha1/sliceconfigs/blue/status").unwrap();
        assert_eq!((a.subresource.as_str(), a.verb, a.name.as_deref()), ("status", "patch", Some("blue")));
        assert_eq!(a.namespace, None);
        let a = request_attributes("GET", "/api/v1/namespaces/web").unwrap();
        assert_eq!((a.group.as_str(), a.resource.as_str(), a.verb), ("", "namespaces", "get"));
        assert_eq!(a.namespace, None, "a namespace object is cluster-scoped");
        let a = request_attributes("POST", "/api/v1/namespaces/s/secrets").unwrap();
        assert_eq!((a.resource.as_str(), a.verb, a.namespace.as_deref()), ("secrets", "create", Some("s")));
        assert!(request_attributes("GET", "/version").is_none());
    }

    #[test]
    fn coverage_respects_scope() {
        let declared = [Access::new("patch", "", "secrets", Scope::OwnNamespace)];
        let req = request_attributes("PATCH", "/api/v1/namespaces/own/secrets/k").unwrap();
        assert!(covers(&declared, &req, Some("own")));
        assert!(!covers(&declared, &req, Some("other")));
        let req = request_attributes("GET", "/api/v1/namespaces/own/secrets/k").unwrap();
        assert!(!covers(&declared, &req, Some("own")), "get is not patch");
    }

    #[test]
    fn a_named_access_covers_only_its_objects() {
        let declared = [Access::new("get", "", "secrets", Scope::OwnNamespace).named(&["a", "b"])];
        let get = |path: &str| request_attributes("GET", path).unwrap();
        assert!(covers(&declared, &get("/api/v1/namespaces/own/secrets/a"), Some("own")));
        assert!(covers(&declared, &get("/api/v1/namespaces/own/secrets/b"), Some("own")));
        assert!(!covers(&declared, &get("/api/v1/namespaces/own/secrets/c"), Some("own")), "another object");
        assert!(!covers(&declared, &get("/api/v1/namespaces/own/secrets"), Some("own")), "a list names no object");
    }
}
