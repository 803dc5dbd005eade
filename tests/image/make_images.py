#!/usr/bin/env python3
"""Builds the container images tests/image.rs imports, from the host's static busybox,
with only the standard library: three layers (gzip, gzip, plain) that exercise owners,
modes (setuid), extended attributes (user.* and security.capability), hard links,
symlinks, a device node, a FIFO, whiteouts and an opaque directory, and an image config.

    make_images.py BUSYBOX OUTDIR

writes OUTDIR/oci (an OCI image layout), OUTDIR/oci.tar (the same as a tar),
OUTDIR/docker.tar (a `docker save` archive), OUTDIR/rootfs.tar.gz (a plain tarball),
OUTDIR/evil.tar (names that leave the image), OUTDIR/oci-single (one tagged manifest,
for pushing to a registry) and OUTDIR/tampered (the layout with one layer blob changed)."""
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

MTIME = 1_700_000_000


def entry(name, kind=tarfile.REGTYPE, data=b"", mode=0o644, uid=0, gid=0, link="", xattrs=None,
          dev=(0, 0)):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = MTIME
    info.linkname = link
    info.devmajor, info.devminor = dev
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if xattrs:
        info.pax_headers = {"SCHILY.xattr." + k: v for k, v in xattrs.items()}
    return info, data


def layer_bytes(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in entries:
            t.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def layers(busybox):
    d = tarfile.DIRTYPE
    base = [
        entry("bin", d, mode=0o755),
        entry("bin/busybox", data=busybox, mode=0o755),
        entry("bin/sh", tarfile.SYMTYPE, link="busybox", mode=0o777),
        entry("bin/cat", tarfile.LNKTYPE, link="bin/busybox"),
        entry("etc", d, mode=0o755),
        entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"),
        entry("etc/group", data=b"root:x:0:\napp:x:1000:\n"),
        entry("opt", d, mode=0o755),
        entry("opt/old", d, mode=0o755),
        entry("opt/old/file", data=b"lower\n"),
        entry("opt/keep", data=b"kept\n"),
        entry("opt/opq", d, mode=0o755),
        entry("opt/opq/x", data=b"hidden by an opaque directory\n"),
        entry("tmp", d, mode=0o1777),
    ]
    upper = [
        entry("opt/.wh.old"),
        entry("opt/opq", d, mode=0o755),
        entry("opt/opq/.wh..wh..opq"),
        entry("opt/opq/y", data=b"upper\n"),
        entry("usr", d, mode=0o755),
        entry("usr/bin", d, mode=0o755),
        entry("usr/bin/suid", data=b"#!/bin/sh\nid -u\n", mode=0o4755),
        entry("usr/bin/pinger", data=b"cap\n", mode=0o755,
              xattrs={"security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}),
        entry("home", d, mode=0o755),
        entry("home/app", d, mode=0o750, uid=1000, gid=1000),
        entry("home/app/data", data=b"owned by app\n", mode=0o640, uid=1000, gid=1000,
              xattrs={"user.kbox": "hello"}),
        entry("dev", d, mode=0o755),
        entry("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3)),
        entry("run", d, mode=0o755),
        entry("run/fifo", tarfile.FIFOTYPE, mode=0o600),
    ]
    top = [entry("etc/motd", data=b"imported by kbox\n")]
    return [layer_bytes(base), layer_bytes(upper), layer_bytes(top)]


CONFIG = {
    "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
    "os": "linux",
    "config": {
        "Env": ["PATH=/bin:/usr/bin", "GREETING=hello-from-the-image"],
        "Cmd": ["-c", "echo $GREETING; pwd; id -u; cat /etc/motd"],
        "Entrypoint": ["/bin/sh"],
        "WorkingDir": "/home/app",
        "User": "app",
    },
    "rootfs": {"type": "layers", "diff_ids": []},
}


def sha(data):
    return hashlib.sha256(data).hexdigest()


def oci_layout(out, blobs_of_layers):
    os.makedirs(os.path.join(out, "blobs", "sha256"))

    def put(data):
        digest = sha(data)
        with open(os.path.join(out, "blobs", "sha256", digest), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    layer_descs = []
    for i, raw in enumerate(blobs_of_layers):
        if i < 2:
            desc = put(gzip.compress(raw, mtime=0))
            desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
        else:
            desc = put(raw)
            desc["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
        layer_descs.append(desc)
    config = dict(CONFIG, rootfs={"type": "layers", "diff_ids": ["sha256:" + sha(r) for r in blobs_of_layers]})
    cdesc = put(json.dumps(config).encode())
    cdesc["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": cdesc, "layers": layer_descs}
    mdesc = put(json.dumps(manifest).encode())
    mdesc["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    # A platform list with another arch first: the importer must pick this machine's.
    other = dict(mdesc, platform={"architecture": "s390x", "os": "linux"})
    other["digest"] = "sha256:" + "0" * 64
    mine = dict(mdesc, platform={"architecture": CONFIG["architecture"], "os": "linux"})
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [other, mine]}, f)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return layer_descs


def tar_dir(src, dst):
    with tarfile.open(dst, "w") as t:
        for name in sorted(os.listdir(src)):
            t.add(os.path.join(src, name), arcname=name)


def docker_save(dst, raw_layers):
    with tarfile.open(dst, "w") as t:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        names = []
        for i, raw in enumerate(raw_layers):
            names.append(f"layer{i}/layer.tar")
            add(names[-1], raw)
        add("config.json", json.dumps(CONFIG).encode())
        add("manifest.json", json.dumps([{"Config": "config.json", "RepoTags": ["kbox/test:1"],
                                          "Layers": names}]).encode())


def main():
    busybox_path, out = sys.argv[1], sys.argv[2]
    with open(busybox_path, "rb") as f:
        busybox = f.read()
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    raw = layers(busybox)
    descs = oci_layout(os.path.join(out, "oci"), raw)
    tar_dir(os.path.join(out, "oci"), os.path.join(out, "oci.tar"))
    docker_save(os.path.join(out, "docker.tar"), raw)
    # A plain tarball: the first layer alone, gzip-compressed.
    with open(os.path.join(out, "rootfs.tar.gz"), "wb") as f:
        f.write(gzip.compress(raw[0], mtime=0))
    with open(os.path.join(out, "evil.tar"), "wb") as f:
        f.write(layer_bytes([entry("etc", tarfile.DIRTYPE, mode=0o755),
                             entry("etc/../../escaped", data=b"out\n")]))
    # A symlink out of the image, then a file written through it: must land inside.
    with open(os.path.join(out, "evil-link.tar"), "wb") as f:
        f.write(layer_bytes([entry("up", tarfile.SYMTYPE, link="../../../../../../../../" + out.lstrip("/"), mode=0o777),
                             entry("up/escaped-through-a-link", data=b"out\n")]))
    with open(os.path.join(out, "evil-abs.tar"), "wb") as f:
        f.write(layer_bytes([entry("/escaped", data=b"out\n")]))
    # One manifest, tagged: what skopeo pushes to a registry (oci:DIR:1).
    shutil.copytree(os.path.join(out, "oci"), os.path.join(out, "oci-single"))
    index_path = os.path.join(out, "oci-single", "index.json")
    with open(index_path) as f:
        index = json.load(f)
    mine = index["manifests"][1]
    mine["annotations"] = {"org.opencontainers.image.ref.name": "1"}
    del mine["platform"]
    with open(index_path, "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [mine]}, f)
    shutil.copytree(os.path.join(out, "oci"), os.path.join(out, "tampered"))
    victim = os.path.join(out, "tampered", "blobs", "sha256", descs[2]["digest"].split(":")[1])
    with open(victim, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))


if __name__ == "__main__":
    main()
