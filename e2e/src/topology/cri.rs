//! A blocking CRI (`runtime.v1`) client over a node's containerd socket, on the lab's tokio
//! runtime. Errors carry containerd's own message (tests check CNI errors through it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ImageSpec, ImageStatusRequest, ListPodSandboxRequest, PodSandbox, PodSandboxConfig, PodSandboxStatusRequest,
    PodSandboxStatusResponse, RemovePodSandboxRequest, RunPodSandboxRequest, StatusRequest, StopPodSandboxRequest,
};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;
use tonic::transport::{Channel, Endpoint, Uri};

/// Every CRI call gives up after this long (a CNI plugin that hangs must not hang the test).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A CRI client bound to one containerd socket.
#[derive(Clone)]
pub(crate) struct CriClient {
    rt: Arc<Runtime>,
    channel: Channel,
    socket: PathBuf,
}

impl std::fmt::Debug for CriClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CriClient").field("socket", &self.socket).finish()
    }
}

/// Readiness as `crictl info` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuntimeReadiness {
    pub(crate) runtime_ready: bool,
    pub(crate) network_ready: bool,
    pub(crate) message: String,
}

impl CriClient {
    /// A lazily connecting client: nothing is dialled until the first call.
    pub(crate) fn new(rt: Arc<Runtime>, socket: &Path) -> Result<Self> {
        let path = socket.to_path_buf();
        let channel = {
            let _guard = rt.enter();
            Endpoint::try_from("http://[::]:50051")?
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
                }))
        };
        Ok(Self { rt, channel, socket: socket.to_path_buf() })
    }

    fn call<T, F>(
        &self,
        what: &str,
        fut: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
        timeout: Duration,
    ) -> Result<T>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = RuntimeServiceClient::new(self.channel.clone());
        let result = self.rt.block_on(async { tokio::time::timeout(timeout, fut(client)).await });
        match result {
            Err(_) => Err(anyhow!("{what} on {}: no answer within {timeout:?}", self.socket.display())),
            Ok(Err(status)) => Err(anyhow!("{what} failed: {} ({:?})", status.message(), status.code())),
            Ok(Ok(resp)) => Ok(resp.into_inner()),
        }
    }

    /// Runtime and network readiness.
    pub(crate) fn readiness(&self, timeout: Duration) -> Result<RuntimeReadiness> {
        let resp =
            self.call("Status", |mut c| async move { c.status(StatusRequest { verbose: false }).await }, timeout)?;
        let conditions = resp.status.map(|s| s.conditions).unwrap_or_default();
        let find = |t: &str| conditions.iter().find(|c| c.r#type == t);
        let message = conditions
            .iter()
            .filter(|c| !c.status)
            .map(|c| format!("{}: {} {}", c.r#type, c.reason, c.message))
            .collect::<Vec<_>>()
            .join("; ");
        Ok(RuntimeReadiness {
            runtime_ready: find("RuntimeReady").is_some_and(|c| c.status),
            network_ready: find("NetworkReady").is_some_and(|c| c.status),
            message,
        })
    }

    /// Whether the CRI image store knows `image`.
    pub(crate) fn image_present(&self, image: &str, timeout: Duration) -> Result<bool> {
        let client = ImageServiceClient::new(self.channel.clone());
        let image = image.to_owned();
        let result = self.rt.block_on(async move {
            let mut client = client;
            let req = ImageStatusRequest { image: Some(ImageSpec { image, ..Default::default() }), verbose: false };
            tokio::time::timeout(timeout, client.image_status(req)).await
        });
        match result {
            Err(_) => Err(anyhow!("ImageStatus on {}: no answer within {timeout:?}", self.socket.display())),
            Ok(Err(status)) => Err(anyhow!("ImageStatus failed: {}", status.message())),
            Ok(Ok(resp)) => Ok(resp.into_inner().image.is_some()),
        }
    }

    /// RunPodSandbox; the error is containerd's message (which includes the CNI plugin's).
    pub(crate) fn run_pod_sandbox(&self, config: PodSandboxConfig) -> Result<String> {
        let req = RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
        let resp = self.call("RunPodSandbox", |mut c| async move { c.run_pod_sandbox(req).await }, CALL_TIMEOUT)?;
        Ok(resp.pod_sandbox_id)
    }

    /// PodSandboxStatus, verbose (containerd then adds its `info` JSON with the runtime spec).
    pub(crate) fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatusResponse> {
        let req = PodSandboxStatusRequest { pod_sandbox_id: id.to_owned(), verbose: true };
        self.call("PodSandboxStatus", |mut c| async move { c.pod_sandbox_status(req).await }, CALL_TIMEOUT)
    }

    /// StopPodSandbox (CNI DEL with the namespace; idempotent in containerd).
    pub(crate) fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let req = StopPodSandboxRequest { pod_sandbox_id: id.to_owned() };
        self.call("StopPodSandbox", |mut c| async move { c.stop_pod_sandbox(req).await }, CALL_TIMEOUT)?;
        Ok(())
    }

    /// RemovePodSandbox (CNI DEL again, with an empty `CNI_NETNS`).
    pub(crate) fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let req = RemovePodSandboxRequest { pod_sandbox_id: id.to_owned() };
        self.call("RemovePodSandbox", |mut c| async move { c.remove_pod_sandbox(req).await }, CALL_TIMEOUT)?;
        Ok(())
    }

    /// Every sandbox containerd knows, ready or not.
    pub(crate) fn list_pod_sandboxes(&self, timeout: Duration) -> Result<Vec<PodSandbox>> {
        let resp = self.call(
            "ListPodSandbox",
            |mut c| async move { c.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await },
            timeout,
        )?;
        Ok(resp.items)
    }
}

/// The pod's network namespace path from containerd's verbose sandbox info: the runtime spec's
/// `network` namespace path (where containerd bind-mounted it), else `/proc/PID/ns/net` of the
/// sandbox process.
pub(crate) fn netns_from_info(info: &HashMap<String, String>) -> Result<PathBuf> {
    let raw = info.get("info").context("PodSandboxStatus has no verbose `info`")?;
    let info: serde_json::Value = serde_json::from_str(raw).context("PodSandboxStatus `info` is not JSON")?;
    let from_spec = info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|ns| ns["type"] == "network")
        .and_then(|ns| ns["path"].as_str())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    if let Some(path) = from_spec {
        return Ok(path);
    }
    match info["pid"].as_u64() {
        Some(pid) if pid > 0 => Ok(PathBuf::from(format!("/proc/{pid}/ns/net"))),
        _ => Err(anyhow!("PodSandboxStatus `info` names no network namespace: {raw}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_comes_from_the_runtime_spec_then_the_pid() {
        let spec = serde_json::json!({
            "pid": 42,
            "runtimeSpec": {"linux": {"namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/x/netns/cni-1"}
            ]}}
        });
        let info = HashMap::from([("info".to_owned(), spec.to_string())]);
        assert_eq!(netns_from_info(&info).unwrap(), PathBuf::from("/x/netns/cni-1"));
        let pid_only = HashMap::from([("info".to_owned(), r#"{"pid": 42}"#.to_owned())]);
        assert_eq!(netns_from_info(&pid_only).unwrap(), PathBuf::from("/proc/42/ns/net"));
        assert!(netns_from_info(&HashMap::new()).is_err());
    }
}
