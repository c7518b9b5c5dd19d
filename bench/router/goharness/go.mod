module voxfleetbench

go 1.26
