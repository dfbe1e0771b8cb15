//! placeholder until the kbc issue lands
