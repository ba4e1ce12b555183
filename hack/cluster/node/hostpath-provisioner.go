// Command zthumb-hostpath-provisioner is the local cluster's storage
// provisioner: a dynamic provisioner (sig-storage-lib-external-provisioner)
// that runs as a host process next to the real node's kubelet and answers
// PVCs of its StorageClass with hostPath PersistentVolumes in one directory
// on that node, pinned to the node by node affinity.
//
// Why not rancher's local-path-provisioner: it refuses ReadWriteMany in its
// per-node mode (the chart's PVC is ReadWriteMany), its shared-filesystem mode
// drops node affinity (so consumers could land on kwok's simulated nodes), and
// it creates directories through helper pods that need an image. On a single
// real node a host process can simply mkdir.
//
// hack/cluster/build-node.sh builds it (module generated there); hack/cluster/node/real-node.sh runs it
// (at hack/cluster/cluster.sh up).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"
)

const pathAnnotation = "zthumb.io/hostpath"

type hostPathProvisioner struct {
	root string // one sub-directory per volume lives here
	node string // the node that has root; every PV is pinned to it
}

func (p *hostPathProvisioner) Provision(_ context.Context, o controller.ProvisionOptions) (*v1.PersistentVolume, controller.ProvisioningState, error) {
	pvc := o.PVC
	if pvc.Spec.Selector != nil {
		return nil, controller.ProvisioningFinished, errors.New("claim.spec.selector is not supported")
	}
	if pvc.Spec.VolumeMode != nil && *pvc.Spec.VolumeMode == v1.PersistentVolumeBlock {
		return nil, controller.ProvisioningFinished, errors.New("volumeMode Block is not supported")
	}
	if o.SelectedNodeName != "" && o.SelectedNodeName != p.node {
		// The scheduler picked another node: let it choose again.
		return nil, controller.ProvisioningReschedule,
			fmt.Errorf("volumes of this class live on node %s, not on %s", p.node, o.SelectedNodeName)
	}
	dir := filepath.Join(p.root, fmt.Sprintf("%s_%s_%s", pvc.Namespace, pvc.Name, o.PVName))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	// Pods run as arbitrary non-root users (Pod Security restricted) and
	// hostPath volumes ignore fsGroup: the directory must be writable by all.
	if err := os.Chmod(dir, 0o777); err != nil {
		return nil, controller.ProvisioningFinished, err
	}
	reclaim := v1.PersistentVolumeReclaimDelete
	if o.StorageClass.ReclaimPolicy != nil {
		reclaim = *o.StorageClass.ReclaimPolicy
	}
	fs := v1.PersistentVolumeFilesystem
	dirType := v1.HostPathDirectory
	return &v1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        o.PVName,
			Annotations: map[string]string{pathAnnotation: dir},
		},
		Spec: v1.PersistentVolumeSpec{
			PersistentVolumeReclaimPolicy: reclaim,
			AccessModes:                   pvc.Spec.AccessModes,
			VolumeMode:                    &fs,
			Capacity:                      v1.ResourceList{v1.ResourceStorage: pvc.Spec.Resources.Requests[v1.ResourceStorage]},
			MountOptions:                  o.StorageClass.MountOptions,
			PersistentVolumeSource: v1.PersistentVolumeSource{
				HostPath: &v1.HostPathVolumeSource{Path: dir, Type: &dirType},
			},
			NodeAffinity: &v1.VolumeNodeAffinity{Required: &v1.NodeSelector{
				NodeSelectorTerms: []v1.NodeSelectorTerm{{MatchExpressions: []v1.NodeSelectorRequirement{{
					Key: v1.LabelHostname, Operator: v1.NodeSelectorOpIn, Values: []string{p.node},
				}}}},
			}},
		},
	}, controller.ProvisioningFinished, nil
}

func (p *hostPathProvisioner) Delete(_ context.Context, pv *v1.PersistentVolume) error {
	if pv.Spec.HostPath == nil {
		return errors.New("not a hostPath volume")
	}
	dir := filepath.Clean(pv.Spec.HostPath.Path)
	rel, err := filepath.Rel(p.root, dir)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") || strings.Contains(rel, string(filepath.Separator)) {
		return fmt.Errorf("refusing to delete %s: not a volume directory under %s", dir, p.root)
	}
	return os.RemoveAll(dir)
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the cluster")
	root := flag.String("root", "", "directory on this host that holds the volumes")
	node := flag.String("node", "", "name of the node this host runs (PVs are pinned to it)")
	name := flag.String("provisioner-name", "zthumb.io/hostpath", "provisioner name in StorageClasses")
	klog.InitFlags(nil)
	flag.Parse()
	if *kubeconfig == "" || *root == "" || *node == "" {
		klog.Exit("--kubeconfig, --root and --node are required")
	}
	absRoot, err := filepath.Abs(*root)
	if err != nil {
		klog.Exit(err)
	}
	if err := os.MkdirAll(absRoot, 0o755); err != nil {
		klog.Exit(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		klog.Exit(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		klog.Exit(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	pc := controller.NewProvisionController(ctx, client, *name,
		&hostPathProvisioner{root: absRoot, node: *node},
		controller.LeaderElection(false),
	)
	klog.Infof("provisioning %s volumes under %s on node %s", *name, absRoot, *node)
	pc.Run(ctx)
}
