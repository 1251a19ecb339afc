//! Eviction: the size bound's policy (see [`policy`]), one instance per shard, driven by the
//! shard's maintainer.

pub(crate) mod policy;
