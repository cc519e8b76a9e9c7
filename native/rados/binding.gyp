{
  "targets": [
    {
      "target_name": "vdiskfs_rados",
      "sources": ["rados.c"],
      "libraries": ["-lrados"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
