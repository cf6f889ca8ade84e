package contract

import (
	"encoding/json"
	"testing"
)

// FuzzParseClaimEnforcement: whatever the file holds, reading it either
// fails with ErrBadClaimEnforcement or gives a known version whose claims
// map is never nil and writes back to what reads the same.
func FuzzParseClaimEnforcement(f *testing.F) {
	f.Add([]byte(`{"version":1,"claims":{"ml/a":{"state":"held","compute":"enforced","memory":"enforced","containers":1}}}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`{"version":1,"claims":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseClaimEnforcement(data)
		if err != nil {
			return
		}
		if r.Version != ClaimEnforcementVersion || r.Claims == nil {
			t.Fatalf("read %+v", r)
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseClaimEnforcement(out); err != nil {
			t.Fatalf("written back, it does not read: %v", err)
		}
	})
}
