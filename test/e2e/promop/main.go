// Command promop generates a Prometheus configuration from ServiceMonitors
// with prometheus-operator's own config generator, as the operator would
// for a Prometheus object, so tests check gpuslice's chart against the code
// users run rather than against a hand-written imitation.
//
//	promop --service-monitors rendered.yaml --scrape-interval 1s > prometheus.yml
//
// It is its own module so the operator's dependencies stay out of
// gpuslice's.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/prometheus-operator/prometheus-operator/pkg/assets"
	"github.com/prometheus-operator/prometheus-operator/pkg/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "promop: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("promop", flag.ContinueOnError)
	file := fs.String("service-monitors", "", "YAML `file` holding ServiceMonitors (other kinds are skipped)")
	interval := fs.String("scrape-interval", "30s", "the Prometheus object's scrapeInterval")
	version := fs.String("prometheus-version", "v2.42.0", "the Prometheus version the configuration is for")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *file == "" {
		return errors.New("--service-monitors is required")
	}
	data, err := os.ReadFile(*file)
	if err != nil {
		return err
	}
	sMons := map[string]*monitoringv1.ServiceMonitor{}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var sm monitoringv1.ServiceMonitor
		if err := dec.Decode(&sm); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("decode %s: %w", *file, err)
		}
		if sm.Kind != monitoringv1.ServiceMonitorsKind {
			continue
		}
		sMons[sm.Namespace+"/"+sm.Name] = &sm
	}
	if len(sMons) == 0 {
		return fmt.Errorf("no ServiceMonitor in %s", *file)
	}
	p := &monitoringv1.Prometheus{
		ObjectMeta: metav1.ObjectMeta{Name: "test", Namespace: "monitoring"},
		Spec: monitoringv1.PrometheusSpec{CommonPrometheusFields: monitoringv1.CommonPrometheusFields{
			Version:        *version,
			ScrapeInterval: monitoringv1.Duration(*interval),
		}},
	}
	cg, err := prometheus.NewConfigGenerator(slog.New(slog.DiscardHandler), p)
	if err != nil {
		return err
	}
	cfg, err := cg.GenerateServerConfiguration(p, sMons, nil, nil, nil, assets.NewTestStoreBuilder(), nil, nil, nil, nil)
	if err != nil {
		return err
	}
	_, err = out.Write(cfg)
	return err
}
