package deployfiles

import "maps"

// HostRole is one cluster host's part, which its env files say: who it
// is, where the others are, and whether it starts a new cluster.
type HostRole struct {
	// Name is the host's target name: its engine's Raft node id and its
	// Consul server's node name.
	Name string
	// Address is where the other hosts reach this one.
	Address string
	// Peers are the other hosts' addresses.
	Peers []string
	// Bootstrap makes this host's engine bootstrap a new cluster; only
	// the first deploy of a cluster sets it, on one host.
	Bootstrap bool
}

// ForHost returns the service env files of one cluster host: files as
// rendered (ServiceEnvPath → content) with the host's own values.
func ForHost(files map[string][]byte, r HostRole) (map[string][]byte, error) {
	return maps.Clone(files), nil
}
