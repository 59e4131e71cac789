//! Carrying out the hub's [`Action`]s on the API server: one request each (two for a namespace
//! that has to be created), nothing decided here.
//!
//! Every action is attempted even when an earlier one failed, so that one object the API server
//! refuses does not hold up all the others; the failures come back together and the runner
//! retries with backoff. The one dependency is kept: no WorkerSlice is created in a namespace
//! that could not be made sure of. Before each action the replica checks that it still leads
//! (leader election) and stops the pass at once when it does not.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use slice_api::crd::{
    CLUSTER_LABEL, MemberCluster, PEERS_NAMESPACE, SliceConfig, SlicePeers, WorkerSlice, peers_role_name,
};

use super::decide::{Action, FinalizedKind};
use super::{Error, FIELD_MANAGER};
use crate::leader::{Leadership, NotLeading};

/// Label on the namespaces the hub creates, saying who manages them.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// What [`execute`] did.
#[derive(Debug, Default)]
pub struct Executed {
    /// How many writes were made.
    pub writes: usize,
    /// Per action: whether it was made (or had nothing to write) without error.
    pub done: Vec<bool>,
    /// The actions that failed, by index, with why.
    pub failures: Vec<(usize, Error)>,
}

/// Carries out `actions` in order, each only while `leadership` allows writes.
///
/// # Errors
/// [`NotLeading`] as soon as this replica does not lead: the remaining actions are not made.
/// Failed actions do not stop the others; they are in [`Executed::failures`].
pub async fn execute(client: &Client, actions: &[Action], leadership: &Leadership) -> Result<Executed, NotLeading> {
    let mut out = Executed { done: vec![false; actions.len()], ..Executed::default() };
    let mut unusable_namespaces = BTreeSet::new();
    for (i, action) in actions.iter().enumerate() {
        if let Action::CreateWorkerSlice(w) = action
            && w.metadata.namespace.as_ref().is_some_and(|ns| unusable_namespaces.contains(ns))
        {
            continue;
        }
        leadership.check()?;
        match execute_one(client, action).await {
            Ok(wrote) => {
                out.done[i] = true;
                if wrote {
                    tracing::info!(%action, "done");
                    out.writes += 1;
                }
            }
            Err(e) => {
                tracing::warn!(%action, error = %slice_api::error_chain::chain(&e), "failed");
                if let Action::EnsureNamespace { namespace, .. } = action {
                    unusable_namespaces.insert(namespace.clone());
                }
                out.failures.push((i, e));
            }
        }
    }
    Ok(out)
}

/// Makes one action's request(s); `Ok(false)` when nothing had to be written.
async fn execute_one(client: &Client, action: &Action) -> Result<bool, Error> {
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PatchParams::default() };
    let post = PostParams { field_manager: Some(FIELD_MANAGER.to_owned()), ..PostParams::default() };
    let failed = |source| Error::Request { action: action.to_string(), source };
    match action {
        Action::SetFinalizers { kind, name, finalizers, resource_version } => {
            let mut metadata = json!({ "finalizers": finalizers });
            if let Some(version) = resource_version {
                metadata["resourceVersion"] = json!(version);
            }
            let patch = Patch::Merge(json!({ "metadata": metadata }));
            match kind {
                FinalizedKind::SliceConfig => {
                    Api::<SliceConfig>::all(client.clone()).patch(name, &params, &patch).await.map(drop)
                }
                FinalizedKind::MemberCluster => {
                    Api::<MemberCluster>::all(client.clone()).patch(name, &params, &patch).await.map(drop)
                }
            }
            .map_err(failed)?;
        }
        Action::EnsureNamespace { cluster, namespace } => {
            let api = Api::<Namespace>::all(client.clone());
            match api.get_opt(namespace).await.map_err(failed)? {
                Some(ns) if ns.metadata.deletion_timestamp.is_some() => {
                    return Err(Error::NamespaceTerminating(namespace.clone()));
                }
                Some(_) => return Ok(false),
                None => {}
            }
            let mut ns = Namespace::default();
            ns.metadata.name = Some(namespace.clone());
            ns.metadata.labels = Some(
                [(CLUSTER_LABEL.to_owned(), cluster.clone()), (MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned())]
                    .into(),
            );
            match api.create(&post, &ns).await {
                // Created between our get and create: exists, which is all we need.
                Err(kube::Error::Api(status)) if status.is_already_exists() => return Ok(false),
                other => other.map_err(failed)?,
            };
        }
        Action::CreateWorkerSlice(w) => {
            let namespace = w.namespace().unwrap_or_default();
            Api::<WorkerSlice>::namespaced(client.clone(), &namespace).create(&post, w).await.map_err(failed)?;
        }
        Action::PatchWorkerSlice { namespace, name, patch } => {
            Api::<WorkerSlice>::namespaced(client.clone(), namespace)
                .patch(name, &params, &Patch::Merge(patch))
                .await
                .map_err(failed)?;
        }
        Action::DeleteWorkerSlice { namespace, name } => {
            let api = Api::<WorkerSlice>::namespaced(client.clone(), namespace);
            delete_if_present(api.delete(name, &DeleteParams::default()).await.map(drop), &[]).map_err(failed)?;
        }
        Action::PatchSliceStatus { name, patch } => {
            let patch: &Value = patch;
            Api::<SliceConfig>::all(client.clone())
                .patch_status(name, &params, &Patch::Merge(patch))
                .await
                .map_err(failed)?;
        }
        Action::PatchClusterStatus { name, patch } => {
            let patch: &Value = patch;
            Api::<MemberCluster>::all(client.clone())
                .patch_status(name, &params, &Patch::Merge(patch))
                .await
                .map_err(failed)?;
        }
        Action::CreatePeers(page) => {
            Api::<SlicePeers>::namespaced(client.clone(), PEERS_NAMESPACE).create(&post, page).await.map_err(failed)?;
        }
        Action::PatchPeers { name, patch } => {
            Api::<SlicePeers>::namespaced(client.clone(), PEERS_NAMESPACE)
                .patch(name, &params, &Patch::Merge(patch))
                .await
                .map_err(failed)?;
        }
        Action::DeletePeers { name } => {
            let api = Api::<SlicePeers>::namespaced(client.clone(), PEERS_NAMESPACE);
            delete_if_present(api.delete(name, &DeleteParams::default()).await.map(drop), &[]).map_err(failed)?;
        }
        Action::GrantPeers { role, create: true, .. } => {
            Api::<Role>::namespaced(client.clone(), PEERS_NAMESPACE).create(&post, role).await.map_err(failed)?;
        }
        Action::GrantPeers { role, create: false, .. } => {
            Api::<Role>::namespaced(client.clone(), PEERS_NAMESPACE)
                .patch(&role.name_any(), &params, &Patch::Merge(json!({ "rules": role.rules })))
                .await
                .map_err(failed)?;
        }
        Action::BindPeers { binding, replace, .. } => {
            let api = Api::<RoleBinding>::namespaced(client.clone(), PEERS_NAMESPACE);
            if *replace {
                let name = binding.name_any();
                delete_if_present(api.delete(&name, &DeleteParams::default()).await.map(drop), &[]).map_err(failed)?;
            }
            api.create(&post, binding).await.map_err(failed)?;
        }
        Action::RevokePeers { cluster } => {
            // The binding first: without it the Role grants nothing.
            let name = peers_role_name(cluster);
            let bindings = Api::<RoleBinding>::namespaced(client.clone(), PEERS_NAMESPACE);
            delete_if_present(bindings.delete(&name, &DeleteParams::default()).await.map(drop), &[]).map_err(failed)?;
            let roles = Api::<Role>::namespaced(client.clone(), PEERS_NAMESPACE);
            delete_if_present(roles.delete(&name, &DeleteParams::default()).await.map(drop), &[]).map_err(failed)?;
        }
        Action::DeleteNamespace { namespace, .. } => {
            // 409 is the API server's answer for a namespace that is already terminating.
            let api = Api::<Namespace>::all(client.clone());
            delete_if_present(api.delete(namespace, &DeleteParams::default()).await.map(drop), &[409])
                .map_err(failed)?;
        }
    }
    Ok(true)
}

/// A delete that finds nothing (404), or gets one of `also_done`, has done its job.
fn delete_if_present(result: Result<(), kube::Error>, also_done: &[u16]) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 404 || also_done.contains(&status.code) => Ok(()),
        other => other,
    }
}
