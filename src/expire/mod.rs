//! Expiry: the hierarchical timer wheel each shard's maintainer uses to find expired entries
//! without reading them (see [`wheel`]).

pub(crate) mod wheel;
