import sys

from omlweb_client.cli import main

sys.exit(main())
