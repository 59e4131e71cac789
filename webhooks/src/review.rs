//! Decoding `AdmissionReview` v1 bodies and encoding the answers; the decisions themselves are in
//! [`crate::mutate`] and [`slice_api::validate`]. Nothing here panics on input: every defect of the
//! body becomes a [`ReviewError::BadRequest`] with a reason (HTTP 400).

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::response::Status;
use slice_api::crd::SliceConfig;

use crate::hub::HubView;
use crate::membership::MembershipSource;
use crate::mutate::{self, Mode, MutationContext};

/// apiVersion of the reviews served.
pub const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";
/// kind of the reviews served.
pub const REVIEW_KIND: &str = "AdmissionReview";

/// Why a review got no admission answer.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body is not an acceptable AdmissionReview (HTTP 400).
    #[error("{0}")]
    BadRequest(String),
    /// The webhook cannot decide now (HTTP 500; the failure policy applies).
    #[error("{0}")]
    Unavailable(String),
}

fn bad(msg: impl Into<String>) -> ReviewError {
    ReviewError::BadRequest(msg.into())
}

/// Decodes a review and checks its envelope and the kind of object it is about.
fn decode(body: &[u8], group: &str, kind: &str) -> Result<AdmissionRequest<DynamicObject>, ReviewError> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
        .map_err(|e| bad(format!("body is not an AdmissionReview {REVIEW_API_VERSION} JSON document: {e}")))?;
    if review.types.kind != REVIEW_KIND || review.types.api_version != REVIEW_API_VERSION {
        return Err(bad(format!(
            "expected kind {REVIEW_KIND} apiVersion {REVIEW_API_VERSION}, got kind {:?} apiVersion {:?}",
            review.types.kind, review.types.api_version
        )));
    }
    let req: AdmissionRequest<DynamicObject> = review.try_into().map_err(|_| bad("AdmissionReview has no request"))?;
    if req.kind.group != group || req.kind.kind != kind {
        let want = if group.is_empty() { kind.to_owned() } else { format!("{kind}.{group}") };
        return Err(bad(format!(
            "this endpoint reviews {want}, got {}{}{}",
            req.kind.kind,
            if req.kind.group.is_empty() { "" } else { "." },
            req.kind.group
        )));
    }
    Ok(req)
}

fn typed<T: serde::de::DeserializeOwned>(obj: &DynamicObject) -> Result<T, String> {
    let value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Encodes the answer. kube-core serializes the patch (`[]byte` in Go) as a list of numbers;
/// the API server documents and sends base64 strings for it, so it is written that way.
fn encode(response: AdmissionResponse) -> Vec<u8> {
    use base64::Engine as _;
    let mut review = serde_json::to_value(response.into_review()).expect("an AdmissionReview serializes");
    if let Some(patch) = review.pointer_mut("/response/patch")
        && let Some(list) = patch.as_array()
    {
        let bytes: Vec<u8> = list.iter().filter_map(|b| b.as_u64()).filter_map(|b| u8::try_from(b).ok()).collect();
        *patch = serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    serde_json::to_vec(&review).expect("a JSON value serializes")
}

fn denied(req: &AdmissionRequest<DynamicObject>, code: u16, reason: &str, message: &str) -> AdmissionResponse {
    let mut response = AdmissionResponse::from(req).deny(message);
    response.result = Status::failure(message, reason).with_code(code);
    response
}

/// The mutating webhook for pods: the encoded AdmissionReview answer.
///
/// # Errors
/// [`ReviewError`] for a bad body or unknown membership.
pub fn review_pod(
    body: &[u8],
    membership: &dyn MembershipSource,
    mode: Mode,
    interface: &str,
) -> Result<Vec<u8>, ReviewError> {
    let req = decode(body, "", "Pod")?;
    if req.operation != Operation::Create {
        return Ok(encode(AdmissionResponse::from(&req)));
    }
    let obj = req.object.as_ref().ok_or_else(|| bad("a CREATE review must carry the object"))?;
    let pod: k8s_openapi::api::core::v1::Pod =
        typed(obj).map_err(|e| bad(format!("request.object is not a Pod: {e}")))?;
    let namespace = req
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .ok_or_else(|| bad("the review names no namespace for the pod"))?;
    let info = membership.namespace(&namespace).map_err(|e| ReviewError::Unavailable(format!("{e:#}")))?;
    let ctx = MutationContext {
        namespace: &namespace,
        namespace_labels: &info.labels,
        member_slices: &info.member_slices,
        mode,
        interface,
    };
    let response = match mutate::mutate(&pod, &ctx) {
        Ok(m) => {
            let mut response = AdmissionResponse::from(&req);
            if !m.patch.0.is_empty() {
                response = response.with_patch(m.patch).map_err(|e| ReviewError::Unavailable(e.to_string()))?;
            }
            if !m.warnings.is_empty() {
                response.warnings = Some(m.warnings);
            }
            response
        }
        Err(e) => denied(&req, 400, "BadRequest", &e.to_string()),
    };
    Ok(encode(response))
}

/// The validating webhook for SliceConfigs: the encoded AdmissionReview answer.
///
/// # Errors
/// [`ReviewError`] for a bad body or an unreadable hub view.
pub fn review_slice_config(body: &[u8], hub: &dyn HubView) -> Result<Vec<u8>, ReviewError> {
    let req = decode(body, slice_api::names::API_GROUP, "SliceConfig")?;
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return Ok(encode(AdmissionResponse::from(&req)));
    }
    let obj = req.object.as_ref().ok_or_else(|| bad("a CREATE or UPDATE review must carry the object"))?;
    let new: SliceConfig = match typed(obj) {
        Ok(s) => s,
        Err(e) => return Ok(encode(denied(&req, 422, "Invalid", &format!("cannot read the SliceConfig: {e}")))),
    };
    let old: Option<SliceConfig> = match (&req.operation, &req.old_object) {
        (Operation::Update, Some(o)) => typed(o).ok(),
        _ => None,
    };
    let others = hub.slice_configs().map_err(|e| ReviewError::Unavailable(format!("{e}")))?;
    let clusters = hub.member_clusters().map_err(|e| ReviewError::Unavailable(format!("{e}")))?;
    let response = match slice_api::validate::validate_slice_config(&new, old.as_ref(), &others, &clusters) {
        Ok(()) => AdmissionResponse::from(&req),
        Err(violations) => denied(
            &req,
            422,
            "Invalid",
            &format!(
                "SliceConfig {} is invalid: {}",
                new.metadata.name.as_deref().unwrap_or("(unnamed)"),
                slice_api::validate::message(&violations)
            ),
        ),
    };
    Ok(encode(response))
}
