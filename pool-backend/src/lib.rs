//! poold: the blobvirt version manager and metadata service.
pub mod kv;
