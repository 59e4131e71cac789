//! What several of slicectl's test files share.

/// A worker's hub kubeconfig as `slicectl install worker --hub-kubeconfig` takes it: one
/// cluster with an inline CA, a token user.
pub const KUBECONFIG: &str = "apiVersion: v1
kind: Config
current-context: hub
clusters:
- name: hub
  cluster: {certificate-authority-data: Q0E=, server: 'https://127.0.0.1:6443'}
contexts:
- name: hub
  context: {cluster: hub, user: worker}
users:
- name: worker
  user: {token: secret-token}
";
