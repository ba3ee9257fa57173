package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wormsign/wormsign/internal/testenv"
)

// TestContainmentBlocksZombieSMTP: the softflowd scenario with containment
// on (grace 0). The zombie is blocked, the nftables export is loaded with
// nft -f into the lab's router (the root namespace, in a table of the lab's
// own that matches only packets from the lab's subscriber veth, deleted at
// cleanup); then the zombie's SMTP fails while its HTTP and the ordinary
// user's SMTP work; after a release and a reload, the zombie's SMTP works.
func TestContainmentBlocksZombieSMTP(t *testing.T) {
	nft := testenv.Tool(t, "nft")
	python := testenv.Tool(t, "python3")
	lab := testenv.NewLab(t, 2, 40)
	port := testenv.FreeUDPPort(t)
	api := freeAPIAddr(t)
	table := fmt.Sprintf("wormsign_lab%d", lab.Index)
	exec.Command(nft, "delete", "table", "inet", table).Run()
	t.Cleanup(func() { exec.Command(nft, "delete", "table", "inet", table).Run() })
	stateFile := filepath.Join(t.TempDir(), "containment.json")
	p := startWormsign(t, append(labEnv(port),
		"WORMSIGN_HTTP_LISTEN="+api,
		"WORMSIGN_HTTP_TOKEN=lab-token",
		"WORMSIGN_CONTAINMENT_ENABLED=true",
		"WORMSIGN_CONTAINMENT_GRACE=0s",
		"WORMSIGN_CONTAINMENT_STATE_FILE="+stateFile,
		"WORMSIGN_CONTAINMENT_NFTABLES_TABLE="+table,
		"WORMSIGN_CONTAINMENT_NFTABLES_INTERFACES="+lab.RouterIf,
	), "run")
	waitLog(t, p, "wormsign started")
	zombieScenario(t, lab, port)
	zombie, user := lab.Subscribers[0], lab.Subscribers[1]

	get := func(format string) string { return getBlocklist(t, api, format) }
	deadline := time.Now().Add(30 * time.Second)
	for get("plain") != zombie.String()+"\n" {
		if time.Now().After(deadline) {
			t.Fatalf("block list is %q, want the zombie %s alone", get("plain"), zombie)
		}
		time.Sleep(200 * time.Millisecond)
	}
	load := func() { loadBlocklist(t, nft, api) }
	load()
	load() // twice is harmless

	// An HTTP server on another port of an internet address.
	web := lab.Servers[0].String()
	srv := lab.Command(lab.Internet, python, "-m", "http.server", "80", "--bind", web)
	srv.Dir = t.TempDir()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	httpFrom := func(from string) bool {
		script := fmt.Sprintf("import socket,sys\nfor i in range(50):\n  try:\n    s=socket.create_connection(('%s',80),2,('%s',0)); s.close(); sys.exit(0)\n  except ConnectionRefusedError:\n    import time; time.sleep(0.1)\n  except OSError:\n    sys.exit(1)\nsys.exit(1)\n", web, from)
		return lab.Command(lab.Subscriber, python, "-c", script).Run() == nil
	}
	if n := lab.SMTPSessions(t, zombie, lab.Servers[:3]); n != 0 {
		t.Errorf("blocked zombie had %d SMTP sessions, want 0", n)
	}
	if !httpFrom(zombie.String()) {
		t.Errorf("blocked zombie cannot reach HTTP, only TCP/25 should be dropped")
	}
	if n := lab.SMTPSessions(t, user, lab.Servers[:2]); n != 2 {
		t.Errorf("ordinary user had %d SMTP sessions, want 2", n)
	}

	req, _ := http.NewRequest("POST", "http://"+api+"/api/v1/blocklist/"+zombie.String()+"/release",
		strings.NewReader(`{"note":"customer cleaned the PC"}`))
	req.Header.Set("Authorization", "Bearer lab-token")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("release: %s", resp.Status)
	}
	load()
	if n := lab.SMTPSessions(t, zombie, lab.Servers[:2]); n != 2 {
		t.Errorf("released zombie had %d SMTP sessions, want 2", n)
	}
	// wormsign blocklist reads the same state (the state file).
	cmd := exec.Command(binary, "blocklist", "--format", "plain")
	cmd.Env = append(os.Environ(), "WORMSIGN_CONTAINMENT_STATE_FILE="+stateFile)
	if out, err := cmd.CombinedOutput(); err != nil || len(out) != 0 {
		t.Errorf("wormsign blocklist after the release: %v %q, want an empty list", err, out)
	}
	p.stop(t)
}
