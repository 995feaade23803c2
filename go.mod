module github.com/zcnet/zcnet

go 1.26
