// cnitool-lab drives a CNI plugin through libcni, the library that containerd,
// CRI-O and podman use to run CNI plugins (Debian's golang-github-appc-cni-dev).
// It is the reference cnitool reduced to what the lab needs:
//
//	cnitool-lab add|check|del <conflist> <netns path> <container id> <ifname>
//
// The plugin is looked up in $CNI_PATH, as a runtime does. The result of ADD is
// printed as JSON and cached by libcni under $CNI_CACHE_DIR, so CHECK and DEL get
// prevResult from the cache exactly as they do under a real runtime.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	if len(os.Args) != 6 {
		fmt.Fprintln(os.Stderr, "usage: cnitool-lab add|check|del <conflist> <netns> <container-id> <ifname>")
		os.Exit(2)
	}
	cmd, confPath, netns, id, ifname := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5]
	list, err := libcni.ConfListFromFile(confPath)
	if err != nil {
		fail(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), os.Getenv("CNI_CACHE_DIR"), nil)
	rt := &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       netns,
		IfName:      ifname,
		Args:        [][2]string{{"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", id}},
	}
	ctx := context.Background()
	switch cmd {
	case "add":
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		if err := res.Print(); err != nil {
			fail(err)
		}
	case "check":
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	case "del":
		if err := cni.DelNetworkList(ctx, list, rt); err != nil {
			fail(err)
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown command", cmd)
		os.Exit(2)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "cnitool-lab:", err)
	os.Exit(1)
}
