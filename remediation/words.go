package remediation

import (
	"fmt"
	"strings"
	"time"

	"github.com/wormsign/wormsign/alert"
)

// KindText says what an alert kind means to a customer, and what to do.
type KindText struct {
	// What happened, as a sentence a customer understands.
	What string
	// Steps to clean the machine.
	Steps []string
}

var commonSteps = []string{
	"Update your computer's operating system and restart it.",
	"Run a full scan with an up-to-date antivirus program (Windows: Microsoft Defender, offline scan).",
	"Change the passwords of your e-mail and other accounts from a computer you know is clean.",
}

// kindTexts are the shipped English texts; the templates may replace them.
var kindTexts = map[string]KindText{
	alert.KindSMTPFanout: {
		What:  "a device on your connection sent e-mail directly to many mail servers across the internet, as spam-sending malware does",
		Steps: append([]string{"Check every computer on your connection, not only the one you use most."}, commonSteps...),
	},
	alert.KindDstEntropy: {
		What:  "a device on your connection tried to reach a great many addresses on the internet in a short time, as a worm spreading does",
		Steps: append([]string{"Disconnect devices you do not recognise, and update routers, cameras and other connected devices."}, commonSteps...),
	},
	alert.KindDarknet: {
		What:  "a device on your connection contacted addresses that no one uses, which only scanning malware does",
		Steps: append([]string{"Update routers, cameras and other connected devices, and change their default passwords."}, commonSteps...),
	},
	alert.KindRelayAbuse: {
		What:  "your mail account sent far more mail through our mail servers than it ever does, which happens when its password was stolen",
		Steps: []string{"Change your mail password now, from a computer you know is clean.", "Check your mail program's sent folder and rules for anything you did not set up."},
	},
	alert.KindOutboundFlood: {
		What:  "a device on your connection sent a flood of traffic at one target on the internet, as computers taken over for attacks do",
		Steps: append([]string{"Disconnect devices you do not recognise, and update routers, cameras and other connected devices."}, commonSteps...),
	},
}

func textOf(kind string) KindText {
	if t, ok := kindTexts[kind]; ok {
		return t
	}
	return KindText{What: "a device on your connection behaved like malware", Steps: commonSteps}
}

// describe is an alert in one line, for a case's history.
func describe(a alert.Alert) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s incident %s from %s", a.Kind, a.ID, a.SubscriberIP)
	if a.DistinctDsts > 0 {
		fmt.Fprintf(&b, ", %d destinations", a.DistinctDsts)
	}
	if a.Evidence.Flood != nil {
		fmt.Fprintf(&b, ", %.0f packets/s at %s", a.Evidence.Flood.PPS, a.Evidence.Flood.Target)
	}
	return b.String()
}

// Evidence is an alert as the customer reads it: the notice e-mail and the
// notice page.
type Evidence struct {
	Kind  string   `json:"kind"`
	What  string   `json:"what"`
	Steps []string `json:"steps"`
	// From and To are UTC, readable.
	From         string   `json:"from"`
	To           string   `json:"to"`
	Address      string   `json:"address"`
	Destinations uint64   `json:"destinations"`
	Sample       []string `json:"sample"`
	// Detail is one more sentence: the port, the rate.
	Detail string `json:"detail"`
}

func readable(t time.Time) string { return t.UTC().Format("2 January 2006, 15:04 MST") }

// evidenceOf puts an alert in plain words.
func evidenceOf(a alert.Alert) Evidence {
	kt := textOf(a.Kind)
	e := Evidence{Kind: a.Kind, What: kt.What, Steps: kt.Steps, From: readable(a.FirstSeen), To: readable(a.LastSeen),
		Address: a.SubscriberIP, Destinations: a.DistinctDsts}
	e.Sample = a.Evidence.SampleDsts
	if len(e.Sample) > 5 {
		e.Sample = e.Sample[:5]
	}
	switch {
	case a.Evidence.Flood != nil:
		f := a.Evidence.Flood
		e.Detail = fmt.Sprintf("About %.0f packets per second of %s went to %s for %.0f seconds, and it answered %.0f%% of them.",
			f.PPS, f.Traffic, f.Target, f.Seconds, 100*f.AnswerRatio)
		e.Sample = []string{f.Target}
	case a.Evidence.Relay != nil:
		e.Detail = fmt.Sprintf("%d connections to our mail servers within %s.", a.Evidence.Relay.Connections, a.Evidence.Window)
	case a.Kind == alert.KindSMTPFanout:
		e.Detail = fmt.Sprintf("The connections went to port 25, the port mail servers receive on; %d of them were refused or never answered.",
			a.Evidence.FailedAttempts)
	}
	return e
}
