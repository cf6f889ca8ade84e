package extender

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	extenderv1 "k8s.io/kube-scheduler/extender/v1"
)

// MaxRequestBytes bounds a request body: the scheduler sends whole Node
// objects when nodeCacheCapable is false.
const MaxRequestBytes = 64 << 20

// Handler serves the extender's verbs at /filter and /prioritize (the
// urlPrefix the scheduler configuration names, with filterVerb: filter and
// prioritizeVerb: prioritize), and /healthz; ready says whether the caches
// have synced (/readyz).
func Handler(e *Extender, ready func() bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /filter", func(w http.ResponseWriter, r *http.Request) {
		args, err := decode(w, r)
		if err != nil {
			writeJSON(w, extenderv1.ExtenderFilterResult{Error: err.Error()})
			return
		}
		writeJSON(w, e.Filter(args))
	})
	mux.HandleFunc("POST /prioritize", func(w http.ResponseWriter, r *http.Request) {
		args, err := decode(w, r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		writeJSON(w, e.Prioritize(args))
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "caches not synced", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

func decode(w http.ResponseWriter, r *http.Request) (extenderv1.ExtenderArgs, error) {
	var args extenderv1.ExtenderArgs
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxRequestBytes)).Decode(&args); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return args, fmt.Errorf("request over %d bytes", MaxRequestBytes)
		}
		return args, fmt.Errorf("decode extender args: %w", err)
	}
	return args, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}
