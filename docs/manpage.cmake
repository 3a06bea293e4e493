# Builds the man page beamline-worker(1) from docs/beamline-worker.1.in: the version, the date and the
# documentation directory filled in, then gzipped with no name or time stamp in the header (gzip -9n, as
# Debian policy wants, so the package is reproducible). Run at build time:
#   cmake -DIN=docs/beamline-worker.1.in -DOUT=build/beamline-worker.1 -DBW_VERSION=x.y.z
#         [-DBW_DOCDIR=/usr/share/doc/beamline-worker] -P docs/manpage.cmake
# and writes OUT and OUT.gz. The date is SOURCE_DATE_EPOCH's when set (reproducible builds), else the
# source's modification time: never the time of the build.
if(NOT DEFINED BW_DOCDIR)
  set(BW_DOCDIR /usr/share/doc/beamline-worker) # the Debian package's
endif()
if(DEFINED ENV{SOURCE_DATE_EPOCH})
  string(TIMESTAMP BW_MAN_DATE "%Y-%m-%d" UTC)
else()
  file(TIMESTAMP "${IN}" BW_MAN_DATE "%Y-%m-%d" UTC)
endif()
configure_file("${IN}" "${OUT}" @ONLY)
find_program(GZIP gzip REQUIRED)
execute_process(COMMAND "${GZIP}" -9n -c "${OUT}" OUTPUT_FILE "${OUT}.gz" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "gzip ${OUT}: ${rc}")
endif()
