//! The Kata JSON shape of agent API messages.
//!
//! Kata's agent hands requests to its policy as `serde_json` of the generated rust-protobuf
//! types, and genpolicy-generated policies are written against that exact shape. We reproduce
//! it: every field is present including defaults, fields keep their proto names (`OCI`,
//! `hwAddr`, `IPAddresses`; `type` becomes Rust's escaped `type_`), enums are their integer
//! values, an unset message field is `null`, `bytes` are arrays of numbers, and protobuf's
//! bookkeeping (`special_fields`) is left out. On input every field may be missing and takes
//! its default, so hand-written requests (CLI, replayed logs) can be partial.
//!
//! The build script attaches these functions to the generated fields.

use protobuf::{EnumFull, EnumOrUnknown, MessageField};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub(crate) fn serialize_enum<E: EnumFull, S: Serializer>(
    value: &EnumOrUnknown<E>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_i32(value.value())
}

pub(crate) fn deserialize_enum<'de, E: EnumFull, D: Deserializer<'de>>(
    d: D,
) -> Result<EnumOrUnknown<E>, D::Error> {
    i32::deserialize(d).map(EnumOrUnknown::from_i32)
}

pub(crate) fn serialize_message<M: Serialize, S: Serializer>(
    value: &MessageField<M>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value.as_ref() {
        Some(m) => m.serialize(s),
        None => s.serialize_unit(),
    }
}

pub(crate) fn deserialize_message<'de, M: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<MessageField<M>, D::Error> {
    Option::<M>::deserialize(d).map(MessageField::from_option)
}
