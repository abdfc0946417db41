//! One request: decode it, find its method, run it (within the client's deadline), and
//! answer with the codes containerd's own ttrpc server uses. The `ttrpc` crate's server says
//! INVALID_ARGUMENT for an unknown service and for an oversized message; containerd treats
//! UNIMPLEMENTED specially (it falls back from task API v3, and reports a service a shim does
//! not serve as such), so this server answers as Go's ttrpc does.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ttrpc::proto::{Codec, MessageHeader, ResponseInit};
use ttrpc::r#async::{Service, TtrpcContext};
use ttrpc::{Code, Request, Response};

pub type Services = HashMap<String, Service>;

/// The prefix of the error the generated handlers return for a payload that is not the
/// method's request message.
const UNDECODABLE_REQUEST: &str = "Unpack request error";

fn status(code: Code, message: impl ToString) -> Response {
    Response::init_status(ttrpc::get_status(code, message))
}

/// Answers one request frame's payload.
pub async fn dispatch(services: &Services, header: MessageHeader, payload: &[u8]) -> Response {
    let request = match <Request as Codec>::decode(payload) {
        Ok(r) => r,
        Err(e) => return status(Code::INVALID_ARGUMENT, format!("unmarshal request: {e}")),
    };
    let Some(service) = services.get(&request.service) else {
        return status(Code::UNIMPLEMENTED, format!("service {}", request.service));
    };
    let Some(method) = service.methods.get(&request.method) else {
        return status(
            Code::UNIMPLEMENTED,
            format!("method {}/{}", request.service, request.method),
        );
    };
    let timeout_nano = request.timeout_nano;
    let ctx = TtrpcContext {
        mh: header,
        metadata: ttrpc::context::from_pb(&request.metadata),
        timeout_nano,
        connection_data: Arc::default(),
    };
    let call = method.handler(ctx, request);
    let result = if timeout_nano > 0 {
        match tokio::time::timeout(Duration::from_nanos(timeout_nano as u64), call).await {
            Ok(r) => r,
            Err(_) => return status(Code::DEADLINE_EXCEEDED, "timeout"),
        }
    } else {
        call.await
    };
    match result {
        Ok(response) => response,
        Err(ttrpc::Error::RpcStatus(s)) => Response::init_status(s),
        Err(ttrpc::Error::Others(m)) if m.starts_with(UNDECODABLE_REQUEST) => {
            status(Code::INVALID_ARGUMENT, m)
        }
        Err(e) => status(Code::UNKNOWN, e),
    }
}
