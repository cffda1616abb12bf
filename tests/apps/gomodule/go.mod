module example.com/gomodule

go 1.19

require example.com/greeting v1.4.0

replace example.com/greeting => ./greeting
