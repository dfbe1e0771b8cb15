//! placeholder until the attester issue lands
