// Package payload is berth's update payload: one OS version (slot
// filesystem, kernel, initrd) described by a signed manifest and carried as
// an OCI artifact, so any OCI registry, an OCI layout directory or a
// tarball can hold it.
package payload

// Schema is the manifest format version this code writes and reads.
const Schema = 1

// Media types of the OCI artifact.
const (
	ArtifactType  = "application/vnd.berth.os.v1"
	EnvelopeType  = "application/vnd.berth.os.envelope.v1+json" // the OCI config blob: the signed manifest
	SlotType      = "application/vnd.berth.os.slot.v1.squashfs"
	KernelType    = "application/vnd.berth.os.kernel.v1"
	InitrdType    = "application/vnd.berth.os.initrd.v1"
	RefAnnotation = "org.opencontainers.image.ref.name"
)

// Blob describes one part of the payload.
type Blob struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"` // lowercase hex
}

// Manifest is what the builder signs. Its JSON bytes, exactly as signed,
// travel inside the envelope.
type Manifest struct {
	Schema        int      `json:"schema"`
	OS            string   `json:"os"`      // image name, e.g. berth-minimal
	Version       string   `json:"version"` // e.g. 0.2.0
	Arch          string   `json:"arch"`    // amd64
	KernelVersion string   `json:"kernel_version"`
	Epoch         int64    `json:"epoch"`
	Slot          Blob     `json:"slot"`
	SlotFSType    string   `json:"slot_fstype"` // squashfs
	Kernel        Blob     `json:"kernel"`
	Initrd        Blob     `json:"initrd"`
	Cmdline       []string `json:"cmdline"`               // the image's kernel.cmdline (without berth.root/slot)
	VerityRoot    string   `json:"verity_root,omitempty"` // reserved: dm-verity root hash
}
