# Installation (cmake --install) in FHS places, and a Debian package (cpack -G DEB from the build
# directory; scripts/check-package.sh builds and checks it: contents, the extracted binary, lintian).
set(CMAKE_INSTALL_DOCDIR share/doc/beamline-worker CACHE PATH "documentation") # the package name, not the project's
include(GNUInstallDirs)

install(TARGETS beamline-worker RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
# beamline-worker(1): docs/beamline-worker.1.in with the version, date and documentation directory filled
# in, gzipped -9n (lintian: manpage-not-compressed), at build time by docs/manpage.cmake
set(BW_MAN ${CMAKE_BINARY_DIR}/man/beamline-worker.1)
add_custom_command(OUTPUT ${BW_MAN} ${BW_MAN}.gz
                   COMMAND ${CMAKE_COMMAND} -DIN=${CMAKE_SOURCE_DIR}/docs/beamline-worker.1.in -DOUT=${BW_MAN}
                           -DBW_VERSION=${PROJECT_VERSION} -DBW_DOCDIR=/usr/${CMAKE_INSTALL_DOCDIR}
                           -P ${CMAKE_SOURCE_DIR}/docs/manpage.cmake
                   DEPENDS ${CMAKE_SOURCE_DIR}/docs/beamline-worker.1.in ${CMAKE_SOURCE_DIR}/docs/manpage.cmake
                   VERBATIM)
add_custom_target(manpage ALL DEPENDS ${BW_MAN}.gz)
install(FILES ${BW_MAN}.gz DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
# Debian's systemd looks in /lib/systemd/system (bookworm); /etc/default is outside the prefix
install(FILES deploy/systemd/beamline-worker.service DESTINATION /lib/systemd/system)
install(FILES deploy/default/beamline-worker DESTINATION /etc/default)
install(FILES README.md docs/design.md docs/benchmarks.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
file(GLOB BW_OPERATOR_DOCS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/docs/operations*.md ${CMAKE_SOURCE_DIR}/docs/alerts.md
     ${CMAKE_SOURCE_DIR}/docs/cli.md)
if(BW_OPERATOR_DOCS)
  install(FILES ${BW_OPERATOR_DOCS} DESTINATION ${CMAKE_INSTALL_DOCDIR})
endif()
install(DIRECTORY deploy/prometheus deploy/grafana DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples OPTIONAL)
add_custom_command(OUTPUT ${CMAKE_BINARY_DIR}/changelog.gz
                   COMMAND gzip -9n -c ${CMAKE_SOURCE_DIR}/deploy/debian/changelog > ${CMAKE_BINARY_DIR}/changelog.gz
                   DEPENDS ${CMAKE_SOURCE_DIR}/deploy/debian/changelog)
add_custom_target(debian_changelog ALL DEPENDS ${CMAKE_BINARY_DIR}/changelog.gz)
install(FILES ${CMAKE_BINARY_DIR}/changelog.gz deploy/debian/copyright DESTINATION ${CMAKE_INSTALL_DOCDIR})

set(CPACK_PACKAGE_NAME beamline-worker)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "The Beamline team <beamline@example.org>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "job-execution worker for the Beamline scheduler")
set(CPACK_PACKAGE_DESCRIPTION
    "Consumes job assignments from NATS (core NATS or JetStream), runs each with a\ntyped handler (echo, sleep, HTTP/GraphQL, JavaScript, JMESPath, PostgreSQL,\nfile blobs, human approval) and publishes exactly one result per assignment,\nwith heartbeats, a dead-letter queue, Prometheus metrics and graceful drain.")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_INSTALL_DEFAULT_DIRECTORY_PERMISSIONS OWNER_READ OWNER_WRITE OWNER_EXECUTE GROUP_READ GROUP_EXECUTE
    WORLD_READ WORLD_EXECUTE)
set(CPACK_DEBIAN_PACKAGE_SECTION net)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://github.com/beamline/beamline-worker")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA ${CMAKE_SOURCE_DIR}/deploy/debian/conffiles)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_GENERATOR DEB)
include(CPack)
