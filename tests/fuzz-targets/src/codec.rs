//! Target `request_codec`: every request type's protobuf decoding, its Kata JSON rendering
//! (what the policy sees), and the policy input the gate builds from the same bytes.
//!
//! Invariants: decode(encode(x)) = x through the Kata JSON shape (bytes -> JSON -> bytes ->
//! JSON gives the same JSON); the gate's policy input is exactly that JSON (CopyFile: Kata's
//! summary, built for every request that decodes except a symlink whose target is not
//! UTF-8); a request that does not decode has no policy input (the gate fails closed on it,
//! never evaluates a default).
//!
//! Input: `[selector][protobuf payload]`; the selector picks the endpoint (any service).

use vigil_agent::policy::CompiledPolicy;
use vigil_protos::{AGENT_SERVICE, ENDPOINTS};

pub fn request_codec(data: &[u8]) {
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    let endpoint = &ENDPOINTS[sel as usize % ENDPOINTS.len()];
    let gated = endpoint.service == AGENT_SERVICE;
    let json = match endpoint.request_json_from_bytes(payload) {
        Ok(json) => json,
        Err(_) => {
            if gated {
                assert!(
                    CompiledPolicy::input(endpoint, payload).is_err(),
                    "{}: bytes that do not decode produced a policy input",
                    endpoint.request
                );
            }
            return;
        }
    };
    let bytes = endpoint
        .request_bytes_from_json(&json)
        .unwrap_or_else(|e| panic!("{}: Kata JSON of a decoded request: {e}", endpoint.request));
    let again = endpoint
        .request_json_from_bytes(&bytes)
        .unwrap_or_else(|e| panic!("{}: re-encoded request: {e}", endpoint.request));
    assert_eq!(json, again, "{}: decode(encode(x)) != x", endpoint.request);
    if !gated {
        return;
    }
    let input = CompiledPolicy::input(endpoint, payload);
    if endpoint.request == "CopyFileRequest" {
        let input = match input {
            Ok(input) => input,
            Err(e) => {
                // The one request that decodes yet has no policy input: a symlink whose target
                // is not UTF-8 (Kata's summary carries it as a string). The gate then denies;
                // gate_decision checks that no input never means allowed.
                use protobuf::Message;
                let req = vigil_protos::agent::CopyFileRequest::parse_from_bytes(payload).unwrap();
                assert!(
                    vigil_policy::file_type(req.file_mode) == "Symlink"
                        && std::str::from_utf8(&req.data).is_err(),
                    "CopyFileRequest: no policy input: {e}"
                );
                return;
            }
        };
        for key in [
            "path",
            "file_type",
            "file_size",
            "file_mode",
            "uid",
            "gid",
            "offset",
        ] {
            assert!(input.get(key).is_some(), "CopyFile summary lacks {key}");
        }
        // The policy sees the path the runtime will use: `.` and empty components dropped
        // (vigil_policy::normalize_path), not the host's spelling of it.
        let path = json["path"].as_str().unwrap_or_default();
        assert_eq!(
            input["path"].as_str(),
            Some(vigil_policy::normalize_path(path).as_str()),
            "CopyFile summary path"
        );
        assert!(
            input.get("data").is_none(),
            "the file content never reaches the policy"
        );
    } else {
        let input = input.unwrap_or_else(|e| {
            panic!(
                "{}: no policy input for a decoded request: {e}",
                endpoint.request
            )
        });
        assert_eq!(
            input, json,
            "{}: policy input is not the Kata JSON",
            endpoint.request
        );
    }
}
