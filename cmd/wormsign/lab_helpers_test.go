package main

import (
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/wormsign/wormsign/alert"
)

// freeAPIAddr is a loopback TCP address free for wormsign's HTTP listener.
func freeAPIAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// collectAlerts reads the alerts p prints on stdout in the background;
// the function returned gives those read so far.
func collectAlerts(p *process) func() []alert.Alert {
	var mu sync.Mutex
	var alerts []alert.Alert
	go func() {
		for p.stdout.Scan() {
			if a, err := alert.Unmarshal(p.stdout.Bytes()); err == nil {
				mu.Lock()
				alerts = append(alerts, a)
				mu.Unlock()
			}
		}
	}()
	return func() []alert.Alert {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(alerts)
	}
}

// getBlocklist reads the block list in format from the API at api, with
// the labs' token.
func getBlocklist(t *testing.T, api, format string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+api+"/api/v1/blocklist?format="+format, nil)
	req.Header.Set("Authorization", "Bearer lab-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET blocklist %s: %s %s", format, resp.Status, body)
	}
	return string(body)
}

// loadBlocklist has the lab's router apply the list as the edge would:
// nft -f of the nftables export.
func loadBlocklist(t *testing.T, nft, api string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "wormsign.nft")
	if err := os.WriteFile(file, []byte(getBlocklist(t, api, "nftables")), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(nft, "-f", file).CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v\n%s", err, out)
	}
}
