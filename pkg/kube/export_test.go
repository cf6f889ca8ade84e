package kube

// MetadataOnly and DoAccept expose the metadata-only list request to the
// external tests.
const MetadataOnly = metadataOnly

// DoAccept is Client.doAccept.
var DoAccept = (*Client).doAccept

// ProtoMajor is the HTTP major version of a request the client's transport
// makes to the API server's /version.
func ProtoMajor(c *Client) (int, error) {
	resp, err := c.http.Get(c.server + "/version")
	if err != nil {
		return 0, err
	}
	_ = resp.Body.Close()
	return resp.ProtoMajor, nil
}
