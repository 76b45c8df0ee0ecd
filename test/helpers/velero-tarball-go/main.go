// Writes a gzip-compressed tarball the way Velero's backupper does (pkg/backup/backup.go
// writeBackupVersion, pkg/backup/item_backupper.go getFileForArchive): Go's archive/tar, one
// regular-file header per item (mode 0755, no directory entries). Reads
// [{"path": "...", "body": "..."}] as JSON on stdin; writes the tarball to the file named by
// the first argument. Used by test/helpers/velero-tarball.ts.
package main

import (
	"archive/tar"
	"compress/gzip"
	"encoding/json"
	"os"
	"time"
)

type entry struct {
	Path string `json:"path"`
	Body string `json:"body"`
}

func main() {
	var entries []entry
	if err := json.NewDecoder(os.Stdin).Decode(&entries); err != nil {
		panic(err)
	}
	out, err := os.Create(os.Args[1])
	if err != nil {
		panic(err)
	}
	gzw := gzip.NewWriter(out)
	tw := tar.NewWriter(gzw)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.Path, Size: int64(len(e.Body)), Typeflag: tar.TypeReg, Mode: 0755, ModTime: time.Now()}
		if err := tw.WriteHeader(hdr); err != nil {
			panic(err)
		}
		if _, err := tw.Write([]byte(e.Body)); err != nil {
			panic(err)
		}
	}
	if err := tw.Close(); err != nil {
		panic(err)
	}
	if err := gzw.Close(); err != nil {
		panic(err)
	}
	if err := out.Close(); err != nil {
		panic(err)
	}
}
