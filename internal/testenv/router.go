package testenv

import "net/netip"

// RouterAddr is the root namespace's address on the subscriber veth
// (RouterIf), the subscribers' gateway: a test serves there what the
// router itself answers (a notice server the router redirects to). NewLab
// gives it the address just before the first subscriber's.
func (l *Lab) RouterAddr() netip.Addr { return l.Subscribers[0].Prev() }
