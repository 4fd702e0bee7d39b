module github.com/berth-os/berth

go 1.26.8
