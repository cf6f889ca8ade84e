package kube

// MetadataOnly and DoAccept expose the metadata-only list request to the
// external tests.
const MetadataOnly = metadataOnly

// DoAccept is Client.doAccept.
var DoAccept = (*Client).doAccept
